//! Rendering a conversation into the model's prompt with the GGUF's own chat template
//! (`tokenizer.chat_template`, Jinja), or ChatML when the file has none.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use super::{ChatMessage, LlmError};

/// Used when the GGUF carries no template: ChatML, which SmolLM, Qwen and many others use.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template.
pub(super) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Whether this is the built-in ChatML fallback.
    pub(super) fallback: bool,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    /// Compiles `source`, or ChatML when `None`.
    pub(super) fn new(source: Option<&str>, bos: &str, eos: &str) -> Result<Self, LlmError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |_format: String| -> String {
            String::new()
        });
        let fallback = source.is_none();
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())
            .map_err(|e| {
                LlmError::Template(format!("the model's chat template does not compile: {e}"))
            })?;
        Ok(Self {
            env,
            bos: bos.into(),
            eos: eos.into(),
            fallback,
        })
    }

    /// The prompt for `messages`, ending where the assistant's reply begins.
    pub(super) fn render(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        let messages: Vec<Message> = messages
            .iter()
            .map(|m| Message {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect();
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| LlmError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => minijinja::value::Value::from(minijinja::value::Serde(&messages)),
                add_generation_prompt => true,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| {
                LlmError::Template(format!("the chat template rejected the conversation: {e}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.parse().unwrap(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_fallback_renders_a_conversation() {
        let t = ChatTemplate::new(None, "", "<|im_end|>").unwrap();
        let prompt = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")])
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_style_methods_and_exceptions_work() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        assert_eq!(t.render(&[msg("user", "  hi ")]).unwrap(), "HI");
        let err = t.render(&[msg("assistant", "x")]).unwrap_err().to_string();
        assert!(err.contains("user first"), "{err}");
    }
}
