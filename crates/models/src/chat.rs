//! Chat prompts. SmolLM2's template (in its GGUF as `tokenizer.chat_template`) is ChatML with a
//! default system message. fmlab renders ChatML itself rather than run Jinja; `ChatTemplate::parse`
//! accepts a template only if it is recognizably this one, and says so otherwise.

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug)]
pub struct ChatTemplate {
    /// Inserted as the first message when the conversation does not start with a system one.
    pub default_system: Option<String>,
}

impl ChatTemplate {
    pub fn parse(template: &str) -> Result<ChatTemplate, String> {
        if !template.contains("<|im_start|>") || !template.contains("<|im_end|>") {
            return Err("the chat template is not ChatML (<|im_start|>role ... <|im_end|>); fmlab renders only ChatML".into());
        }
        // The default system message sits between "<|im_start|>system\n" and "<|im_end|>" inside the
        // `loop.first and role != 'system'` branch.
        let default_system = template.find("<|im_start|>system\n").and_then(|i| {
            let rest = &template[i + "<|im_start|>system\n".len()..];
            rest.find("<|im_end|>").map(|j| rest[..j].to_string())
        });
        Ok(ChatTemplate { default_system })
    }

    /// The prompt for `messages`, ending with the assistant's turn header when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut s = String::new();
        if let (Some(sys), Some(first)) = (&self.default_system, messages.first()) {
            if first.role != "system" {
                s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
            }
        }
        for m in messages {
            s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        s
    }
}

/// A conversation with a chat model: its messages so far, rendered through the model's template.
pub struct Conversation {
    template: ChatTemplate,
    messages: Vec<Message>,
}

impl Conversation {
    /// A conversation that starts with `system` (else the template's own default system message).
    pub fn new(template: ChatTemplate, system: Option<String>) -> Conversation {
        Conversation { template, messages: system.into_iter().map(|s| Message { role: "system".into(), content: s }).collect() }
    }

    /// Adds the user's turn; returns the prompt the model continues (ending with the assistant's
    /// turn header).
    pub fn user(&mut self, text: &str) -> String {
        self.messages.push(Message { role: "user".into(), content: text.to_string() });
        self.template.render(&self.messages, true)
    }

    /// Adds the model's reply, so the next turn sees it.
    pub fn assistant(&mut self, text: &str) {
        self.messages.push(Message { role: "assistant".into(), content: text.to_string() });
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
}

#[cfg(test)]
mod conversation_tests {
    use super::*;

    #[test]
    fn turns_accumulate_in_the_prompt() {
        let t = ChatTemplate { default_system: Some("Be brief.".into()) };
        let mut c = Conversation::new(t, None);
        let p1 = c.user("Hi");
        assert_eq!(p1, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        c.assistant("Hello.");
        let p2 = c.user("Bye");
        assert!(p2.starts_with(&p1[..p1.len() - "<|im_start|>assistant\n".len()]), "{p2}");
        assert!(p2.ends_with("<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"), "{p2}");
        assert_eq!(c.messages().len(), 3);
        let mut own = Conversation::new(ChatTemplate { default_system: Some("x".into()) }, Some("Own.".into()));
        assert!(own.user("q").starts_with("<|im_start|>system\nOwn.<|im_end|>\n<|im_start|>user\nq"));
    }
}
