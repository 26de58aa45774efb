//! The bindings of one exchange indexed for routing by its type: direct by exact key (a hash lookup per
//! routing key), fanout as one set, topic as a trie, headers as a list of patterns (every headers
//! binding must be tried, as in RabbitMQ: a pattern is not a key).

use std::collections::HashMap;

use super::headers::{Headers, HeadersPattern};
use super::topic::TopicTrie;
use super::{Binding, Destination, ExchangeError, ExchangeKind};

/// Destinations with the number of bindings naming each (bindings differing only in arguments).
type Counted = HashMap<Destination, u32>;

fn add(counted: &mut Counted, destination: &Destination) {
    *counted.entry(destination.clone()).or_insert(0) += 1;
}

fn sub(counted: &mut Counted, destination: &Destination) {
    if let Some(count) = counted.get_mut(destination) {
        *count -= 1;
        if *count == 0 {
            counted.remove(destination);
        }
    }
}

#[derive(Debug)]
pub(super) enum Router {
    Direct(crate::NameMap<Counted>),
    Fanout(Counted),
    Topic(TopicTrie),
    Headers(Vec<(HeadersPattern, Binding)>),
}

impl Router {
    pub(super) fn new(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => Self::Direct(crate::NameMap::default()),
            ExchangeKind::Fanout => Self::Fanout(HashMap::new()),
            ExchangeKind::Topic => Self::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Self::Headers(Vec::new()),
        }
    }

    /// Checks a binding before it is stored (headers bindings with a bad `x-match` are refused).
    pub(super) fn validate(&self, binding: &Binding) -> Result<(), ExchangeError> {
        if let Self::Headers(_) = self {
            HeadersPattern::new(&binding.args)?;
        }
        Ok(())
    }

    /// Indexes a new binding (already validated and not a duplicate).
    pub(super) fn insert(&mut self, binding: &Binding) {
        match self {
            Self::Direct(by_key) => add(
                by_key.entry(binding.key.clone()).or_default(),
                &binding.destination,
            ),
            Self::Fanout(all) => add(all, &binding.destination),
            Self::Topic(trie) => trie.insert(&binding.key, &binding.destination),
            Self::Headers(patterns) => {
                if let Ok(pattern) = HeadersPattern::new(&binding.args) {
                    patterns.push((pattern, binding.clone()));
                }
            }
        }
    }

    pub(super) fn remove(&mut self, binding: &Binding) {
        match self {
            Self::Direct(by_key) => {
                if let Some(counted) = by_key.get_mut(&binding.key) {
                    sub(counted, &binding.destination);
                    if counted.is_empty() {
                        by_key.remove(&binding.key);
                    }
                }
            }
            Self::Fanout(all) => sub(all, &binding.destination),
            Self::Topic(trie) => trie.remove(&binding.key, &binding.destination),
            Self::Headers(patterns) => patterns.retain(|(_, b)| b != binding),
        }
    }

    /// Appends the destinations a message with these routing keys (its own, then `CC` and `BCC`) and
    /// headers goes to; duplicates are removed by the caller. `headers` is asked for only by a headers
    /// exchange.
    pub(super) fn route<'h>(
        &self,
        keys: &[&str],
        headers: &dyn Fn() -> Option<&'h Headers>,
        out: &mut Vec<Destination>,
    ) {
        match self {
            Self::Direct(by_key) => {
                for key in keys {
                    if let Some(counted) = by_key.get(*key) {
                        out.extend(counted.keys().cloned());
                    }
                }
            }
            Self::Fanout(all) => out.extend(all.keys().cloned()),
            Self::Topic(trie) => {
                for key in keys {
                    trie.route(key, out);
                }
            }
            Self::Headers(patterns) => out.extend(
                patterns
                    .iter()
                    .filter(|(p, _)| p.matches(headers()))
                    .map(|(_, b)| b.destination.clone()),
            ),
        }
    }
}
