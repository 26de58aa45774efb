//! Headers-exchange matching as RabbitMQ defines it (`rabbit_exchange_type_headers`).
//!
//! A binding's arguments are the pattern; `x-match` says how it must match the message's headers:
//! `all` (the default) or `any`, ignoring every pattern key that starts with `x-`, or `all-with-x` /
//! `any-with-x`, which include them. A pattern value of type void only asks that the header be present;
//! otherwise the header must be equal by [`HeaderValue::matches`] (numbers by value whatever their type, as
//! in RabbitMQ). With no keys left, `all` matches every message and `any` none.

use std::collections::BTreeMap;

use super::{BindingArgs, ExchangeError, HeaderValue};

/// A message's headers as the router sees them.
pub type Headers = BTreeMap<String, HeaderValue>;

/// How a headers binding matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

/// One binding of a headers exchange, ready to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadersPattern {
    mode: XMatch,
    /// The keys that take part, `x-match` and (unless `-with-x`) other `x-` keys left out.
    pattern: Vec<(String, HeaderValue)>,
}

impl HeadersPattern {
    /// Reads `x-match` and the pattern from binding arguments; an unknown `x-match` is a 406 at bind
    /// time, as in RabbitMQ, rather than a binding that silently never matches.
    pub fn new(args: &BindingArgs) -> Result<Self, ExchangeError> {
        let mode = match args.entries.iter().find(|(k, _)| k == "x-match") {
            None => XMatch::All,
            Some((_, HeaderValue::Str(s))) if s == "all" => XMatch::All,
            Some((_, HeaderValue::Str(s))) if s == "any" => XMatch::Any,
            Some((_, HeaderValue::Str(s))) if s == "all-with-x" => XMatch::AllWithX,
            Some((_, HeaderValue::Str(s))) if s == "any-with-x" => XMatch::AnyWithX,
            Some((_, other)) => {
                return Err(ExchangeError::PreconditionFailed(format!(
                "Invalid x-match field value {other}; expected all, any, all-with-x, or any-with-x"
            )))
            }
        };
        let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
        let pattern = args
            .entries
            .iter()
            .filter(|(k, _)| k != "x-match" && (with_x || !k.starts_with("x-")))
            .cloned()
            .collect();
        Ok(Self { mode, pattern })
    }

    /// Whether a message with `headers` (none = an empty table) matches.
    pub fn matches(&self, headers: Option<&Headers>) -> bool {
        let one = |(key, want): &(String, HeaderValue)| match headers.and_then(|h| h.get(key)) {
            None => false,
            Some(have) => want.matches(have),
        };
        match self.mode {
            XMatch::All | XMatch::AllWithX => self.pattern.iter().all(one),
            XMatch::Any | XMatch::AnyWithX => self.pattern.iter().any(one),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> HeaderValue {
        HeaderValue::Str(v.to_string())
    }

    fn args(entries: &[(&str, HeaderValue)]) -> BindingArgs {
        BindingArgs::new(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn headers(entries: &[(&str, HeaderValue)]) -> Headers {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn all_and_any() {
        let all =
            HeadersPattern::new(&args(&[("format", s("pdf")), ("type", s("report"))])).unwrap();
        let any = HeadersPattern::new(&args(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]))
        .unwrap();
        let both = headers(&[
            ("format", s("pdf")),
            ("type", s("report")),
            ("other", s("x")),
        ]);
        let one = headers(&[("format", s("pdf")), ("type", s("log"))]);
        assert!(all.matches(Some(&both)));
        assert!(!all.matches(Some(&one)));
        assert!(any.matches(Some(&one)));
        assert!(!any.matches(Some(&headers(&[("format", s("zip"))]))));
        assert!(!any.matches(None));
        // Same text, different type: no match.
        let int = headers(&[("format", HeaderValue::Int { ty: b'I', value: 1 })]);
        let want_int = HeadersPattern::new(&args(&[("format", s("1"))])).unwrap();
        assert!(!want_int.matches(Some(&int)));
    }

    #[test]
    fn numbers_match_by_value_whatever_their_type() {
        let int = |ty, value| HeaderValue::Int { ty, value };
        let float = |ty, v: f64| HeaderValue::Float {
            ty,
            bits: v.to_bits(),
        };
        let five = HeadersPattern::new(&args(&[("n", int(b'I', 5))])).unwrap();
        for have in [int(b'b', 5), int(b'l', 5), int(b'T', 5), float(b'd', 5.0)] {
            assert!(
                five.matches(Some(&headers(&[("n", have.clone())]))),
                "{have:?}"
            );
        }
        for have in [
            int(b'l', 6),
            float(b'd', 5.5),
            s("5"),
            HeaderValue::Other("Boolean(true)".into()),
        ] {
            assert!(
                !five.matches(Some(&headers(&[("n", have.clone())]))),
                "{have:?}"
            );
        }
        let half = HeadersPattern::new(&args(&[("n", float(b'f', 0.5))])).unwrap();
        assert!(half.matches(Some(&headers(&[("n", float(b'd', 0.5))]))));
        // No rounding: 2^53 + 1 is not the float 2^53.
        let big = HeadersPattern::new(&args(&[("n", int(b'l', (1 << 53) + 1))])).unwrap();
        assert!(!big.matches(Some(&headers(&[("n", float(b'd', (1u64 << 53) as f64))]))));
        // A byte array equals the string of its bytes.
        let text = HeadersPattern::new(&args(&[("k", s("pdf"))])).unwrap();
        assert!(text.matches(Some(&headers(&[(
            "k",
            HeaderValue::Bytes(b"pdf".to_vec())
        )]))));
        // Bindings whose arguments differ only in a type stay two bindings.
        assert_ne!(args(&[("n", int(b'I', 5))]), args(&[("n", int(b'l', 5))]));
    }

    #[test]
    fn x_keys_and_void_and_empty() {
        let all = HeadersPattern::new(&args(&[("x-tenant", s("a"))])).unwrap();
        assert!(
            all.matches(None),
            "x- keys ignored: an empty pattern matches all"
        );
        let any =
            HeadersPattern::new(&args(&[("x-match", s("any")), ("x-tenant", s("a"))])).unwrap();
        assert!(!any.matches(None), "an empty any-pattern matches nothing");
        let with_x =
            HeadersPattern::new(&args(&[("x-match", s("all-with-x")), ("x-tenant", s("a"))]))
                .unwrap();
        assert!(!with_x.matches(None));
        assert!(with_x.matches(Some(&headers(&[("x-tenant", s("a"))]))));
        let any_x = HeadersPattern::new(&args(&[
            ("x-match", s("any-with-x")),
            ("x-tenant", s("a")),
            ("k", s("v")),
        ]))
        .unwrap();
        assert!(any_x.matches(Some(&headers(&[("x-tenant", s("a"))]))));
        let present = HeadersPattern::new(&args(&[("k", HeaderValue::Void)])).unwrap();
        assert!(present.matches(Some(&headers(&[("k", s("anything"))]))));
        assert!(!present.matches(Some(&headers(&[("j", s("v"))]))));
        assert!(matches!(
            HeadersPattern::new(&args(&[("x-match", s("some"))])),
            Err(ExchangeError::PreconditionFailed(_))
        ));
    }
}
