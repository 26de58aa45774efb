//! Reply codes of AMQP 0-9-1 and the two kinds of failure they come with: a channel error closes one
//! channel, a connection error closes the connection (spec section 1.2, as RabbitMQ uses them).

use wharf_core::exchanges::ExchangeError;
use wharf_core::queues::QueueError;

pub const CONNECTION_FORCED: u16 = 320;
pub const NO_ROUTE: u16 = 312;
pub const ACCESS_REFUSED: u16 = 403;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const CHANNEL_ERROR: u16 = 504;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const NOT_ALLOWED: u16 = 530;
pub const NOT_IMPLEMENTED: u16 = 540;
pub const INTERNAL_ERROR: u16 = 541;

/// What went wrong, with the method that caused it (class and method id, 0 when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
    /// Closes the whole connection rather than one channel.
    pub hard: bool,
}

impl Fault {
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
            hard: false,
        }
    }

    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        Self {
            hard: true,
            ..Self::channel(code, text)
        }
    }

    /// A method only the server sends, sent by a client (a declare-ok, channel.flow-ok, basic.deliver, an
    /// unasked close-ok, …): RabbitMQ 3.10.8's answer, a 503 connection error.
    pub fn unimplemented_method() -> Self {
        Self::connection(COMMAND_INVALID, "unimplemented method")
    }

    /// A field-table argument of the wrong type in the wording RabbitMQ 3.10.8 uses for `x-dead-letter-exchange`
    /// and `alternate-exchange` (`owner` names what declared it: `queue 'q'`, `exchange 'x'`).
    pub fn invalid_arg_type(arg: &str, type_name: &str, owner: &str, vhost: &str) -> Self {
        Self::channel(
            PRECONDITION_FAILED,
            format!("invalid type '{type_name}' for arg '{arg}' in {owner} in vhost '{vhost}'"),
        )
    }

    pub fn at(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// The reply text as RabbitMQ writes it ("NOT_FOUND - no queue 'x' in vhost '/'"), cut to fit a
    /// short string.
    pub fn reply_text(&self) -> String {
        let name = match self.code {
            CONNECTION_FORCED => "CONNECTION_FORCED",
            ACCESS_REFUSED => "ACCESS_REFUSED",
            NOT_FOUND => "NOT_FOUND",
            RESOURCE_LOCKED => "RESOURCE_LOCKED",
            PRECONDITION_FAILED => "PRECONDITION_FAILED",
            FRAME_ERROR => "FRAME_ERROR",
            SYNTAX_ERROR => "SYNTAX_ERROR",
            COMMAND_INVALID => "COMMAND_INVALID",
            CHANNEL_ERROR => "CHANNEL_ERROR",
            UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            NOT_ALLOWED => "NOT_ALLOWED",
            NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            _ => "ERROR",
        };
        let mut text = format!("{name} - {}", self.text);
        // A short string holds 255 bytes: RabbitMQ cuts a longer text to 252 and marks the cut with "...".
        if text.len() > 255 {
            let mut cut = 252;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        text
    }
}

impl From<QueueError> for Fault {
    fn from(err: QueueError) -> Self {
        if let QueueError::Internal(_) = err {
            // Storage failed: a connection error, as RabbitMQ's internal errors are.
            return Fault::connection(INTERNAL_ERROR, err.to_string());
        }
        let code = match err {
            QueueError::NotFound { .. } => NOT_FOUND,
            QueueError::PreconditionFailed(_) => PRECONDITION_FAILED,
            QueueError::ResourceLocked { .. } => RESOURCE_LOCKED,
            QueueError::AccessRefused(_) => ACCESS_REFUSED,
            QueueError::Exchange(ExchangeError::NotFound { .. }) => NOT_FOUND,
            QueueError::Exchange(ExchangeError::AccessRefused(_)) => ACCESS_REFUSED,
            QueueError::Exchange(ExchangeError::PreconditionFailed(_)) => PRECONDITION_FAILED,
            QueueError::Internal(_) => INTERNAL_ERROR,
        };
        Fault::channel(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reply_text_is_cut_as_rabbitmq_cuts_it() {
        let text = Fault::channel(NOT_FOUND, "q".repeat(400)).reply_text();
        assert_eq!(text.len(), 255);
        assert!(text.starts_with("NOT_FOUND - qqq") && text.ends_with("q..."));
        let short = Fault::channel(NOT_FOUND, "no queue 'x'").reply_text();
        assert_eq!(short, "NOT_FOUND - no queue 'x'");
    }
}
