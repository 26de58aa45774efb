//! Topic-exchange bindings as a trie of binding-key words, so that routing a key walks only the paths
//! its words (and the `*` / `#` wildcards) select: the cost follows the depth of the key and the number
//! of wildcard branches, not the number of bindings.
//!
//! Words are split on `.` as RabbitMQ does: the empty key has **zero** words (so `#` matches it and `*`
//! does not, and the binding key `""` matches only `""`), `a..b` has an empty middle word that `*`
//! matches, and `#` matches zero or more words anywhere (`a.#.b` matches `a.b`).

use std::collections::{HashMap, HashSet};

use super::Destination;

/// The words of a binding or routing key.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

#[derive(Debug, Default)]
struct Node {
    /// Children by literal word; the wildcards are children named `*` and `#`.
    children: HashMap<String, Node>,
    /// Destinations of binding keys ending here, with how many bindings (different arguments) say so.
    here: HashMap<Destination, u32>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty()
    }
}

/// The bindings of one topic exchange.
#[derive(Debug, Default)]
pub struct TopicTrie {
    root: Node,
}

impl TopicTrie {
    /// Adds one binding of `key` to `destination`.
    pub fn insert(&mut self, key: &str, destination: &Destination) {
        let mut node = &mut self.root;
        for word in words(key) {
            node = node.children.entry(word.to_string()).or_default();
        }
        *node.here.entry(destination.clone()).or_insert(0) += 1;
    }

    /// Removes one binding of `key` to `destination`, pruning nodes left empty.
    pub fn remove(&mut self, key: &str, destination: &Destination) {
        remove(&mut self.root, &words(key), destination);
    }

    /// Adds every destination whose binding key matches `routing_key` to `out`.
    pub fn route(&self, routing_key: &str, out: &mut Vec<Destination>) {
        let words = words(routing_key);
        // (node, word index) pairs already explored: several `#` can reach the same state, and
        // exploring it again would only find the same destinations (and could take exponential time).
        let mut seen = HashSet::new();
        walk(&self.root, &words, 0, &mut seen, out);
    }
}

fn remove(node: &mut Node, words: &[&str], destination: &Destination) {
    match words.split_first() {
        None => {
            if let Some(count) = node.here.get_mut(destination) {
                *count -= 1;
                if *count == 0 {
                    node.here.remove(destination);
                }
            }
        }
        Some((word, rest)) => {
            let Some(child) = node.children.get_mut(*word) else {
                return;
            };
            remove(child, rest, destination);
            if child.is_empty() {
                node.children.remove(*word);
            }
        }
    }
}

fn walk(
    node: &Node,
    words: &[&str],
    at: usize,
    seen: &mut HashSet<(*const Node, usize)>,
    out: &mut Vec<Destination>,
) {
    if !seen.insert((node as *const Node, at)) {
        return;
    }
    let hash = node.children.get("#");
    match words.get(at) {
        None => {
            out.extend(node.here.keys().cloned());
            if let Some(hash) = hash {
                // `#` matching zero words.
                walk(hash, words, at, seen, out);
            }
        }
        Some(word) => {
            if let Some(child) = node.children.get(*word) {
                walk(child, words, at + 1, seen, out);
            }
            if let Some(star) = node.children.get("*") {
                walk(star, words, at + 1, seen, out);
            }
            if let Some(hash) = hash {
                for next in at..=words.len() {
                    walk(hash, words, next, seen, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(name: &str) -> Destination {
        Destination::Queue(name.to_string())
    }

    fn routed(trie: &TopicTrie, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.route(key, &mut out);
        let mut names: Vec<String> = out
            .into_iter()
            .map(|d| match d {
                Destination::Queue(n) | Destination::Exchange(n) => n,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The obvious recursive matcher the trie must agree with.
    fn naive(binding: &[&str], key: &[&str]) -> bool {
        match binding.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|k| naive(rest, key.get(k..).unwrap_or(&[]))),
            Some((&"*", rest)) => key
                .split_first()
                .is_some_and(|(_, key_rest)| naive(rest, key_rest)),
            Some((word, rest)) => key
                .split_first()
                .is_some_and(|(first, key_rest)| first == word && naive(rest, key_rest)),
        }
    }

    #[test]
    fn rabbitmq_word_rules() {
        let mut trie = TopicTrie::default();
        for (key, queue) in [
            ("#", "hash"),
            ("*", "star"),
            ("", "empty"),
            ("a.*.b", "a_star_b"),
            ("a.#.b", "a_hash_b"),
            ("*.orange.*", "orange"),
            ("lazy.#", "lazy"),
        ] {
            trie.insert(key, &q(queue));
        }
        assert_eq!(routed(&trie, ""), ["empty", "hash"]);
        assert_eq!(routed(&trie, "x"), ["hash", "star"]);
        assert_eq!(routed(&trie, "a.b"), ["a_hash_b", "hash"]);
        assert_eq!(routed(&trie, "a..b"), ["a_hash_b", "a_star_b", "hash"]);
        assert_eq!(routed(&trie, "quick.orange.rabbit"), ["hash", "orange"]);
        assert_eq!(routed(&trie, "lazy"), ["hash", "lazy", "star"]);
        trie.remove("#", &q("hash"));
        trie.remove("lazy.#", &q("lazy"));
        assert_eq!(routed(&trie, "lazy.x.y"), Vec::<String>::new());
        assert!(!trie.root.children.contains_key("lazy"), "pruned");
    }

    #[test]
    fn bindings_are_counted() {
        let mut trie = TopicTrie::default();
        trie.insert("a.#", &q("q"));
        trie.insert("a.#", &q("q"));
        trie.remove("a.#", &q("q"));
        assert_eq!(routed(&trie, "a.b"), ["q"]);
        trie.remove("a.#", &q("q"));
        assert!(trie.root.is_empty());
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new()),
            Just("*".to_string()),
            Just("#".to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop::collection::vec(word(), 0..5).prop_map(|w| w.join("."))
    }

    proptest! {
        #[test]
        fn trie_agrees_with_naive_matcher(
            bindings in prop::collection::vec(key(), 0..12),
            keys in prop::collection::vec(key(), 1..12),
        ) {
            let mut trie = TopicTrie::default();
            for (i, b) in bindings.iter().enumerate() {
                trie.insert(b, &q(&i.to_string()));
            }
            for key in &keys {
                let mut expected: Vec<String> = bindings
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| naive(&words(b), &words(key)))
                    .map(|(i, _)| i.to_string())
                    .collect();
                expected.sort();
                prop_assert_eq!(routed(&trie, key), expected, "key {:?}", key);
            }
            // Removing every binding leaves nothing behind.
            for (i, b) in bindings.iter().enumerate() {
                trie.remove(b, &q(&i.to_string()));
            }
            prop_assert!(trie.root.is_empty());
        }
    }
}
