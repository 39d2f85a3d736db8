//! A chat request's conversation, ready for the chat template: plain messages (tools polyfilled) or
//! JSON messages and tools for a template that writes tools itself.

/// A chat request's conversation, ready for the chat template.
#[derive(Debug, Clone)]
pub enum ChatPrompt {
    /// Plain messages (tools polyfilled).
    Plain(Vec<bitnet_chat::Message>),
    /// JSON messages and tools for a template that writes tools itself.
    Native(crate::tools::native::NativeChat),
}

impl ChatPrompt {
    /// The plain messages (tests of the polyfill).
    #[cfg(test)]
    pub fn plain(self) -> Vec<bitnet_chat::Message> {
        match self {
            ChatPrompt::Plain(m) => m,
            ChatPrompt::Native(n) => panic!("a native prompt: {n:?}"),
        }
    }

    /// The prompt's token ids.
    pub fn encode(&self, e: &bitnet_runtime::Engine) -> anyhow::Result<Vec<u32>> {
        match self {
            ChatPrompt::Plain(m) => e.encode_chat(m),
            ChatPrompt::Native(n) => e.encode_chat_json(&n.messages, n.tools.as_deref()),
        }
    }
}
