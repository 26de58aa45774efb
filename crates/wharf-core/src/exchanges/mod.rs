//! AMQP exchanges and bindings of one vhost, in memory: the predeclared exchanges, declare / delete,
//! queue and exchange-to-exchange bindings, auto-delete, alternate exchanges, and routing a message to the
//! set of queues it reaches.
//!
//! Pure state: [`Exchanges`] knows no queues (a queue is only a [`Destination`] name) and no wire format
//! (binding arguments and message headers arrive as [`HeaderValue`]s the protocol crate rendered). The
//! vhost (`queues/vhost.rs`) holds it under a read-mostly lock and checks that bound queues exist, so every
//! rule about exchanges is unit-tested here without sockets.

pub mod headers;
mod router;
pub mod topic;

use std::collections::{BTreeSet, HashMap, HashSet};

use headers::Headers;
use router::Router;

/// The default exchange: every queue is bound to it by its name; it cannot be declared, deleted or bound.
pub const DEFAULT_EXCHANGE: &str = "";

/// The exchanges every vhost has, as in RabbitMQ (`amq.match` is a second headers exchange), each with
/// whether it is internal: `amq.rabbitmq.trace` is where RabbitMQ's firehose tracer publishes; clients may bind
/// to it (Wharf publishes nothing there yet) but not publish to it.
pub const PREDECLARED: [(&str, ExchangeKind, bool); 6] = [
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

/// Errors of the exchange model; the AMQP front end maps each to its reply code (403, 404, 406).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// 404: the exchange does not exist.
    #[error("no exchange '{name}' in vhost '{vhost}'")]
    NotFound { name: String, vhost: String },
    /// 403: the default exchange, an `amq.*` name, or publishing to an internal exchange.
    #[error("{0}")]
    AccessRefused(String),
    /// 406: a redeclare with different properties, `if-unused` on a bound exchange, bad arguments.
    #[error("{0}")]
    PreconditionFailed(String),
}

/// Exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// The type named in exchange.declare; `None` for a type this broker has not got.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// What an exchange is declared with; a redeclare must match (else 406).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub kind: ExchangeKind,
    /// Survives a restart (with its bindings to durable destinations): see [`crate::definitions`].
    pub durable: bool,
    /// Deleted when its last binding (as a source) goes.
    pub auto_delete: bool,
    /// Reachable only through exchange-to-exchange bindings, never by basic.publish.
    pub internal: bool,
    /// The `alternate-exchange` argument: where messages go that this exchange routes nowhere. Of the
    /// arguments it is the only one compared on redeclare, as in RabbitMQ.
    pub alternate_exchange: Option<String>,
}

impl ExchangeSpec {
    pub fn new(kind: ExchangeKind) -> Self {
        Self {
            kind,
            durable: false,
            auto_delete: false,
            internal: false,
            alternate_exchange: None,
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

/// A field-table value as the router compares it: strings readable (`x-match` is one), numbers and byte arrays
/// as values, anything else (booleans, decimals, nested tables and arrays) rendered by the protocol crate *with
/// its type*.
///
/// Equality (`==`) is exact, type included: it tells apart two bindings whose arguments differ only in a type,
/// as AMQP does. Matching a message's header against a binding uses [`HeaderValue::matches`] instead, which is
/// RabbitMQ's rule (Erlang's `==` on the decoded values): a number equals the same number of any width or
/// kind (an int 5 matches a long 5, a byte 5 and a double 5.0) and a byte array equals a string of the same
/// bytes; a boolean never equals a number. Clients disagree on the type they give a number (amqplib sends a
/// small one as a byte, Bunny as a long, Java as an int), so a type-exact rule drops messages between them.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum HeaderValue {
    /// Void: in a headers binding, "the header is present".
    Void,
    Str(String),
    Other(String),
    /// An integer of any width, or a timestamp, with the AMQP type octet it came as.
    Int {
        ty: u8,
        value: i64,
    },
    /// A float or double, as the bits of its `f64` value, with the AMQP type octet it came as.
    Float {
        ty: u8,
        bits: u64,
    },
    /// A byte array.
    Bytes(Vec<u8>),
}

impl HeaderValue {
    /// Whether a message header of value `have` satisfies this binding value (see the type's documentation).
    pub fn matches(&self, have: &HeaderValue) -> bool {
        use HeaderValue::*;
        match (self, have) {
            (Void, _) => true,
            (Int { value: a, .. }, Int { value: b, .. }) => a == b,
            (Float { bits: a, .. }, Float { bits: b, .. }) => {
                f64::from_bits(*a) == f64::from_bits(*b)
            }
            (Int { value, .. }, Float { bits, .. }) | (Float { bits, .. }, Int { value, .. }) => {
                int_equals_float(*value, f64::from_bits(*bits))
            }
            (Str(a), Bytes(b)) | (Bytes(b), Str(a)) => a.as_bytes() == b.as_slice(),
            (a, b) => a == b,
        }
    }
}

/// Exact comparison of an integer with a float (`5 == 5.0`; no rounding of large integers).
fn int_equals_float(value: i64, float: f64) -> bool {
    // 2^63 as f64: every float in [-2^63, 2^63) without a fraction converts to i64 exactly.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    float.fract() == 0.0 && (-TWO_63..TWO_63).contains(&float) && float as i64 == value
}

impl std::fmt::Display for HeaderValue {
    /// As RabbitMQ prints a value in an error text: a string as an Erlang binary (`<<"some">>`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderValue::Void => f.write_str("undefined"),
            HeaderValue::Str(s) => write!(f, "<<{s:?}>>"),
            HeaderValue::Bytes(b) => write!(f, "<<{:?}>>", String::from_utf8_lossy(b)),
            HeaderValue::Int { value, .. } => write!(f, "{value}"),
            HeaderValue::Float { bits, .. } => write!(f, "{}", f64::from_bits(*bits)),
            HeaderValue::Other(s) => f.write_str(s),
        }
    }
}

/// A binding's arguments: the entries (sorted by key) and a canonical rendering that makes two
/// bindings that differ only in arguments distinct, as in AMQP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingArgs {
    pub canonical: String,
    pub entries: Vec<(String, HeaderValue)>,
}

impl BindingArgs {
    pub fn new(mut entries: Vec<(String, HeaderValue)>) -> Self {
        entries.sort();
        Self {
            canonical: format!("{entries:?}"),
            entries,
        }
    }
}

/// One binding: its identity is all four parts (AMQP allows the same pair bound under several keys, or
/// the same key with different arguments).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Binding {
    pub source: String,
    pub destination: Destination,
    pub key: String,
    pub args: BindingArgs,
}

#[derive(Debug)]
struct Exchange {
    spec: ExchangeSpec,
    /// Bindings with this exchange as their source.
    bindings: BTreeSet<Binding>,
    router: Router,
}

impl Exchange {
    fn new(spec: ExchangeSpec) -> Self {
        Self {
            router: Router::new(spec.kind),
            spec,
            bindings: BTreeSet::new(),
        }
    }
}

/// The exchanges and bindings of one vhost.
#[derive(Debug)]
pub struct Exchanges {
    /// The vhost's name, for error texts.
    vhost: String,
    exchanges: crate::NameMap<Exchange>,
    /// Bindings by destination, so a deleted queue or exchange takes its bindings along without a scan.
    inbound: HashMap<Destination, BTreeSet<Binding>>,
}

impl Default for Exchanges {
    fn default() -> Self {
        Self::new()
    }
}

fn reserved(name: &str) -> bool {
    name.starts_with("amq.")
}

impl Exchanges {
    fn not_found(&self, name: &str) -> ExchangeError {
        ExchangeError::NotFound {
            name: name.to_string(),
            vhost: self.vhost.clone(),
        }
    }
}

fn default_refused() -> ExchangeError {
    ExchangeError::AccessRefused("operation not permitted on the default exchange".into())
}

/// A binding from or to the default exchange: 403.
fn refuse_default(binding: &Binding) -> Result<(), ExchangeError> {
    if binding.source == DEFAULT_EXCHANGE
        || binding.destination == Destination::Exchange(DEFAULT_EXCHANGE.to_string())
    {
        return Err(default_refused());
    }
    Ok(())
}

impl Exchanges {
    /// The default vhost's (`/`) exchanges: the predeclared `amq.*` ones (durable, as in RabbitMQ).
    pub fn new() -> Self {
        Self::in_vhost("/")
    }

    /// Vhost `vhost`'s exchanges: the predeclared `amq.*` ones.
    pub fn in_vhost(vhost: &str) -> Self {
        let exchanges = PREDECLARED
            .iter()
            .map(|&(name, kind, internal)| {
                let spec = ExchangeSpec {
                    durable: true,
                    internal,
                    ..ExchangeSpec::new(kind)
                };
                (name.to_string(), Exchange::new(spec))
            })
            .collect();
        Self {
            vhost: vhost.to_string(),
            exchanges,
            inbound: HashMap::new(),
        }
    }

    /// The spec of `name`, if it exists (not for the default exchange, which has none to compare).
    pub fn spec(&self, name: &str) -> Option<&ExchangeSpec> {
        self.exchanges.get(name).map(|x| &x.spec)
    }

    /// Whether `name` exists (the default exchange always does).
    pub fn exists(&self, name: &str) -> bool {
        name == DEFAULT_EXCHANGE || self.exchanges.contains_key(name)
    }

    /// The spec of `name` if it is a durable exchange the definitions save: durable and not predeclared.
    pub fn saved_spec(&self, name: &str) -> Option<&ExchangeSpec> {
        self.spec(name).filter(|x| x.durable && !reserved(name))
    }

    /// Whether `binding` is there.
    pub fn has_binding(&self, binding: &Binding) -> bool {
        self.exchanges
            .get(&binding.source)
            .is_some_and(|x| x.bindings.contains(binding))
    }

    /// exchange.declare.
    pub fn declare(
        &mut self,
        name: &str,
        spec: ExchangeSpec,
        passive: bool,
    ) -> Result<(), ExchangeError> {
        // Even a passive declare of the default exchange is refused, as in RabbitMQ.
        if name == DEFAULT_EXCHANGE {
            return Err(default_refused());
        }
        if passive {
            return if self.exists(name) {
                Ok(())
            } else {
                Err(self.not_found(name))
            };
        }
        // An existing exchange (a predeclared `amq.*` one too) is redeclared when the declaration is
        // equivalent; only a new name may not take the reserved prefix (RabbitMQ's order of checks).
        if let Some(existing) = self.exchanges.get(name) {
            let e = &existing.spec;
            let inequivalent = |arg: &str, received: &str, current: &str| {
                ExchangeError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': received '{received}' \
                     but current is '{current}'",
                    self.vhost
                ))
            };
            if e.kind != spec.kind {
                return Err(inequivalent("type", spec.kind.as_str(), e.kind.as_str()));
            }
            for (arg, received, current) in [
                ("durable", spec.durable, e.durable),
                ("auto_delete", spec.auto_delete, e.auto_delete),
                ("internal", spec.internal, e.internal),
            ] {
                if received != current {
                    return Err(inequivalent(
                        arg,
                        &received.to_string(),
                        &current.to_string(),
                    ));
                }
            }
            if e.alternate_exchange != spec.alternate_exchange {
                // RabbitMQ's wording: two values are quoted; one missing is "none" against "the value …".
                let both = e.alternate_exchange.is_some() && spec.alternate_exchange.is_some();
                let value = |ae: &Option<String>| match ae {
                    Some(ae) if both => format!("'{ae}'"),
                    Some(ae) => format!("the value '{ae}' of type 'longstr'"),
                    None => "none".to_string(),
                };
                return Err(ExchangeError::PreconditionFailed(format!(
                    "inequivalent arg 'alternate-exchange' for exchange '{name}' in vhost '{}': \
                     received {} but current is {}",
                    self.vhost,
                    value(&spec.alternate_exchange),
                    value(&e.alternate_exchange)
                )));
            }
            return Ok(());
        }
        if reserved(name) {
            return Err(ExchangeError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        self.exchanges.insert(name.to_string(), Exchange::new(spec));
        Ok(())
    }

    /// exchange.delete. Deleting a missing exchange succeeds, as in RabbitMQ. Returns every exchange
    /// deleted (this one and those auto-deleted because they lost their last binding to it).
    pub fn delete(&mut self, name: &str, if_unused: bool) -> Result<Vec<String>, ExchangeError> {
        if name == DEFAULT_EXCHANGE {
            return Err(default_refused());
        }
        if reserved(name) {
            return Err(ExchangeError::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.vhost
            )));
        }
        let Some(exchange) = self.exchanges.get(name) else {
            return Ok(Vec::new());
        };
        if if_unused && !exchange.bindings.is_empty() {
            return Err(ExchangeError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.vhost
            )));
        }
        let mut deleted = Vec::new();
        self.remove_exchange(name, &mut deleted);
        Ok(deleted)
    }

    /// The durable exchanges other than the predeclared ones, and every binding: what
    /// [`crate::definitions`] saves (it keeps the bindings whose both ends are durable).
    pub fn durable_view(&self) -> (Vec<(String, ExchangeSpec)>, Vec<Binding>) {
        let mut exchanges: Vec<(String, ExchangeSpec)> = self
            .exchanges
            .iter()
            .filter(|(name, x)| x.spec.durable && !reserved(name))
            .map(|(name, x)| (name.clone(), x.spec.clone()))
            .collect();
        exchanges.sort_by(|a, b| a.0.cmp(&b.0));
        let bindings = self
            .exchanges
            .values()
            .flat_map(|x| x.bindings.iter().cloned())
            .collect();
        (exchanges, bindings)
    }

    /// queue.bind / exchange.bind. The caller has checked that a destination queue exists. Binding twice
    /// is a no-op.
    pub fn bind(&mut self, binding: Binding) -> Result<(), ExchangeError> {
        self.check_ends(&binding)?;
        let Some(source) = self.exchanges.get_mut(&binding.source) else {
            return Err(self.not_found(&binding.source));
        };
        if source.bindings.contains(&binding) {
            return Ok(());
        }
        source.router.validate(&binding)?;
        source.router.insert(&binding);
        source.bindings.insert(binding.clone());
        self.inbound
            .entry(binding.destination.clone())
            .or_default()
            .insert(binding);
        Ok(())
    }

    /// queue.unbind / exchange.unbind. Removing a binding that does not exist succeeds. Returns the
    /// exchanges auto-deleted because they lost their last binding.
    pub fn unbind(&mut self, binding: &Binding) -> Result<Vec<String>, ExchangeError> {
        // Unbinding is idempotent in RabbitMQ: a binding, source or destination that is not there is
        // unbound already. Only the default exchange is refused (403).
        refuse_default(binding)?;
        let mut deleted = Vec::new();
        self.remove_binding(binding, &mut deleted);
        Ok(deleted)
    }

    /// A queue (or exchange) went: its bindings go with it. Returns the exchanges auto-deleted.
    pub fn remove_destination(&mut self, destination: &Destination) -> Vec<String> {
        let mut deleted = Vec::new();
        for binding in self.inbound.remove(destination).unwrap_or_default() {
            self.remove_binding(&binding, &mut deleted);
        }
        deleted
    }

    /// The queues a message published to `exchange` reaches. `keys` are its routing key followed by its
    /// `CC` and `BCC` keys; `headers` are for headers exchanges. Exchange-to-exchange bindings are
    /// followed once per exchange (cycles end, and a queue reached along several paths gets one copy);
    /// an exchange that routes the message nowhere hands it to its alternate exchange, if any.
    /// `headers` is called at most once, and only if a headers exchange is reached: rendering a message's
    /// headers for matching is work most messages need not pay for.
    pub fn route(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: &dyn Fn() -> Option<Headers>,
    ) -> Result<Vec<String>, ExchangeError> {
        let mut queues: Vec<String> = Vec::new();
        if exchange == DEFAULT_EXCHANGE {
            if let [key] = keys {
                // The common case (no CC / BCC): one queue, no set.
                return Ok(vec![(*key).to_string()]);
            }
            let mut seen: HashSet<&str> = HashSet::new();
            for key in keys {
                if seen.insert(key) {
                    queues.push((*key).to_string());
                }
            }
            return Ok(queues);
        }
        let mut seen_queues: HashSet<String> = HashSet::new();
        let Some(first) = self.exchanges.get(exchange) else {
            return Err(self.not_found(exchange));
        };
        if first.spec.internal {
            return Err(ExchangeError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.vhost
            )));
        }
        let rendered = std::cell::OnceCell::new();
        let headers = || rendered.get_or_init(headers).as_ref();
        let mut seen_exchanges: HashSet<&str> = HashSet::from([exchange]);
        let mut work = vec![first];
        let mut destinations = Vec::new();
        while let Some(x) = work.pop() {
            destinations.clear();
            x.router.route(keys, &headers, &mut destinations);
            if destinations.is_empty() {
                if let Some(alternate) = x.spec.alternate_exchange.as_deref() {
                    if let Some((name, ae)) = self.exchanges.get_key_value(alternate) {
                        if seen_exchanges.insert(name) {
                            work.push(ae);
                        }
                    }
                }
            }
            for destination in &destinations {
                match destination {
                    Destination::Queue(name) => {
                        if !seen_queues.contains(name) {
                            seen_queues.insert(name.clone());
                            queues.push(name.clone());
                        }
                    }
                    Destination::Exchange(name) => {
                        if let Some((name, next)) = self.exchanges.get_key_value(name) {
                            if seen_exchanges.insert(name) {
                                work.push(next);
                            }
                        }
                    }
                }
            }
        }
        Ok(queues)
    }

    /// Bindings to or from the default exchange are refused (403) before anything else, and a destination
    /// exchange must exist (404), as RabbitMQ checks them.
    fn check_ends(&self, binding: &Binding) -> Result<(), ExchangeError> {
        refuse_default(binding)?;
        if let Destination::Exchange(name) = &binding.destination {
            if !self.exchanges.contains_key(name) {
                return Err(self.not_found(name));
            }
        }
        Ok(())
    }

    fn remove_binding(&mut self, binding: &Binding, deleted: &mut Vec<String>) {
        if let Some(set) = self.inbound.get_mut(&binding.destination) {
            set.remove(binding);
            if set.is_empty() {
                self.inbound.remove(&binding.destination);
            }
        }
        let Some(source) = self.exchanges.get_mut(&binding.source) else {
            return;
        };
        if !source.bindings.remove(binding) {
            return;
        }
        source.router.remove(binding);
        if source.spec.auto_delete && source.bindings.is_empty() {
            let name = binding.source.clone();
            self.remove_exchange(&name, deleted);
        }
    }

    fn remove_exchange(&mut self, name: &str, deleted: &mut Vec<String>) {
        let Some(exchange) = self.exchanges.remove(name) else {
            return;
        };
        deleted.push(name.to_string());
        for binding in &exchange.bindings {
            if let Some(set) = self.inbound.get_mut(&binding.destination) {
                set.remove(binding);
                if set.is_empty() {
                    self.inbound.remove(&binding.destination);
                }
            }
        }
        // Bindings *to* it: their sources may be auto-delete and lose their last binding.
        for binding in self
            .inbound
            .remove(&Destination::Exchange(name.to_string()))
            .unwrap_or_default()
        {
            self.remove_binding(&binding, deleted);
        }
    }
}

#[cfg(test)]
mod tests;
