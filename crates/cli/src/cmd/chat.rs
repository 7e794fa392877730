//! `fmlab chat`: a conversation with a Llama-family model in the terminal; each turn is the
//! model's chat template over the conversation so far (models::chat::Conversation).

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use clap::Args;
use fmlab_models::chat::Conversation;

use crate::llm::GenArgs;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    gen: GenArgs,
    /// A system message (default: the template's own).
    #[arg(long)]
    system: Option<String>,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let gen = a.gen.validate()?;
    let lm = gen.load()?;
    let mut conv = Conversation::new(lm.template.clone().context("the model has no chat template")?, a.system);
    eprintln!("chatting with {} (empty line or Ctrl-D to quit)", gen.name);
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        let prompt = conv.user(line.trim_end());
        let mut reply = Vec::new();
        gen.generate(&lm, &prompt, &mut Tee { a: std::io::stdout().lock(), b: &mut reply })?;
        println!();
        conv.assistant(&String::from_utf8_lossy(&reply));
    }
}

/// Writes to the terminal and keeps a copy (the reply joins the conversation).
struct Tee<'a, W: Write> {
    a: W,
    b: &'a mut Vec<u8>,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.b.extend_from_slice(buf);
        self.a.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.a.flush()
    }
}
