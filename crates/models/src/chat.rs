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
