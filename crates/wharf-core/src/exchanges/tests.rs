use super::*;

fn q(name: &str) -> Destination {
    Destination::Queue(name.to_string())
}

fn x(name: &str) -> Destination {
    Destination::Exchange(name.to_string())
}

fn binding(source: &str, destination: Destination, key: &str) -> Binding {
    Binding {
        source: source.to_string(),
        destination,
        key: key.to_string(),
        args: BindingArgs::default(),
    }
}

fn declare(ex: &mut Exchanges, name: &str, kind: ExchangeKind) {
    ex.declare(name, ExchangeSpec::new(kind), false).unwrap();
}

fn route(ex: &Exchanges, exchange: &str, keys: &[&str]) -> Vec<String> {
    let mut queues = ex.route(exchange, keys, &|| None).unwrap();
    queues.sort();
    queues
}

#[test]
fn default_and_reserved_names_are_refused() {
    let mut ex = Exchanges::new();
    let fanout = ExchangeSpec::new(ExchangeKind::Fanout);
    // The default exchange, even passively, and a new `amq.*` name: 403. Deleting a predeclared one: 403.
    for (name, passive) in [("", false), ("", true), ("amq.mine", false)] {
        assert!(matches!(
            ex.declare(name, fanout.clone(), passive),
            Err(ExchangeError::AccessRefused(_))
        ));
    }
    for name in ["", "amq.direct"] {
        assert!(matches!(
            ex.delete(name, false),
            Err(ExchangeError::AccessRefused(_))
        ));
    }
    // A predeclared exchange exists: an equivalent redeclare is fine, another type or flag is 406 (RabbitMQ).
    for (name, kind, internal) in PREDECLARED {
        ex.declare(name, fanout.clone(), true).unwrap();
        let same = ExchangeSpec {
            durable: true,
            internal,
            ..ExchangeSpec::new(kind)
        };
        ex.declare(name, same.clone(), false).unwrap();
        let transient = ExchangeSpec {
            durable: false,
            ..same
        };
        match ex.declare(name, transient, false) {
            Err(ExchangeError::PreconditionFailed(text)) => {
                assert!(text.contains("inequivalent arg 'durable'"), "{text}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        ex.declare("amq.direct", fanout.clone(), false),
        Err(ExchangeError::PreconditionFailed(_))
    ));
    assert!(matches!(
        ex.bind(binding("", q("a"), "a")),
        Err(ExchangeError::AccessRefused(_))
    ));
    assert!(matches!(
        ex.bind(binding("amq.direct", x(""), "a")),
        Err(ExchangeError::AccessRefused(_))
    ));
    assert_eq!(route(&ex, "", &["a", "b", "a"]), ["a", "b"]);
}

#[test]
fn declare_passive_redeclare_and_delete() {
    let mut ex = Exchanges::new();
    assert_eq!(
        ex.declare("logs", ExchangeSpec::new(ExchangeKind::Fanout), true),
        Err(ExchangeError::NotFound {
            name: "logs".into(),
            vhost: "/".into()
        })
    );
    declare(&mut ex, "logs", ExchangeKind::Fanout);
    declare(&mut ex, "logs", ExchangeKind::Fanout);
    for other in [
        ExchangeSpec::new(ExchangeKind::Direct),
        ExchangeSpec {
            durable: true,
            ..ExchangeSpec::new(ExchangeKind::Fanout)
        },
        ExchangeSpec {
            alternate_exchange: Some("ae".into()),
            ..ExchangeSpec::new(ExchangeKind::Fanout)
        },
    ] {
        assert!(matches!(
            ex.declare("logs", other, false),
            Err(ExchangeError::PreconditionFailed(_))
        ));
    }
    ex.bind(binding("logs", q("a"), "")).unwrap();
    assert!(matches!(
        ex.delete("logs", true),
        Err(ExchangeError::PreconditionFailed(_))
    ));
    assert_eq!(ex.delete("logs", false).unwrap(), ["logs"]);
    assert!(ex.delete("logs", false).unwrap().is_empty(), "idempotent");
    assert_eq!(ex.remove_destination(&q("a")), Vec::<String>::new());
    assert!(ex.inbound.is_empty());
}

#[test]
fn direct_fanout_and_multiple_keys() {
    let mut ex = Exchanges::new();
    declare(&mut ex, "direct_logs", ExchangeKind::Direct);
    ex.bind(binding("direct_logs", q("errors"), "error"))
        .unwrap();
    ex.bind(binding("direct_logs", q("all"), "error")).unwrap();
    ex.bind(binding("direct_logs", q("all"), "info")).unwrap();
    ex.bind(binding("direct_logs", q("all"), "info")).unwrap();
    assert_eq!(route(&ex, "direct_logs", &["error"]), ["all", "errors"]);
    assert_eq!(route(&ex, "direct_logs", &["info"]), ["all"]);
    assert_eq!(
        route(&ex, "direct_logs", &["info", "error"]),
        ["all", "errors"]
    );
    assert!(route(&ex, "direct_logs", &["debug"]).is_empty());
    ex.unbind(&binding("direct_logs", q("all"), "info"))
        .unwrap();
    assert!(
        route(&ex, "direct_logs", &["info"]).is_empty(),
        "a duplicate bind is one binding"
    );
    assert_eq!(route(&ex, "amq.fanout", &["x"]), Vec::<String>::new());
    ex.bind(binding("amq.fanout", q("f1"), "ignored")).unwrap();
    ex.bind(binding("amq.fanout", q("f2"), "")).unwrap();
    assert_eq!(route(&ex, "amq.fanout", &["x"]), ["f1", "f2"]);
    assert_eq!(
        ex.route("nope", &["x"], &|| None),
        Err(ExchangeError::NotFound {
            name: "nope".into(),
            vhost: "/".into()
        })
    );
}

#[test]
fn same_pair_with_different_arguments_is_two_bindings() {
    let mut ex = Exchanges::new();
    let mut with_args = binding("amq.direct", q("a"), "k");
    with_args.args = BindingArgs::new(vec![("x-note".into(), HeaderValue::Str("1".into()))]);
    ex.bind(binding("amq.direct", q("a"), "k")).unwrap();
    ex.bind(with_args.clone()).unwrap();
    ex.unbind(&with_args).unwrap();
    assert_eq!(route(&ex, "amq.direct", &["k"]), ["a"]);
}

#[test]
fn exchange_to_exchange_without_duplicates_or_loops() {
    let mut ex = Exchanges::new();
    declare(&mut ex, "a", ExchangeKind::Fanout);
    declare(&mut ex, "b", ExchangeKind::Fanout);
    declare(&mut ex, "c", ExchangeKind::Topic);
    ex.bind(binding("a", x("b"), "")).unwrap();
    ex.bind(binding("a", x("c"), "")).unwrap();
    ex.bind(binding("b", q("q"), "")).unwrap();
    ex.bind(binding("c", q("q"), "#")).unwrap();
    ex.bind(binding("b", x("a"), "")).unwrap(); // a cycle
    assert_eq!(route(&ex, "a", &["k"]), ["q"]);
    assert!(matches!(
        ex.bind(binding("a", x("missing"), "")),
        Err(ExchangeError::NotFound { .. })
    ));
    // Deleting b takes the bindings from and to it.
    ex.delete("b", false).unwrap();
    assert_eq!(route(&ex, "a", &["k"]), ["q"]);
    ex.delete("c", false).unwrap();
    assert!(route(&ex, "a", &["k"]).is_empty());
}

#[test]
fn internal_exchanges_only_through_bindings() {
    let mut ex = Exchanges::new();
    let internal = ExchangeSpec {
        internal: true,
        ..ExchangeSpec::new(ExchangeKind::Fanout)
    };
    ex.declare("inner", internal, false).unwrap();
    ex.bind(binding("inner", q("q"), "")).unwrap();
    ex.bind(binding("amq.fanout", x("inner"), "")).unwrap();
    assert!(matches!(
        ex.route("inner", &[""], &|| None),
        Err(ExchangeError::AccessRefused(_))
    ));
    assert_eq!(route(&ex, "amq.fanout", &[""]), ["q"]);
}

#[test]
fn alternate_exchange_catches_what_routes_nowhere() {
    let mut ex = Exchanges::new();
    let with_ae = ExchangeSpec {
        alternate_exchange: Some("unrouted".into()),
        ..ExchangeSpec::new(ExchangeKind::Direct)
    };
    ex.declare("main", with_ae, false).unwrap();
    declare(&mut ex, "unrouted", ExchangeKind::Fanout);
    ex.bind(binding("main", q("good"), "good")).unwrap();
    ex.bind(binding("unrouted", q("catch"), "")).unwrap();
    assert_eq!(route(&ex, "main", &["good"]), ["good"]);
    assert_eq!(route(&ex, "main", &["bad"]), ["catch"]);
    // An alternate exchange that does not exist (yet) routes nowhere.
    ex.delete("unrouted", false).unwrap();
    assert!(route(&ex, "main", &["bad"]).is_empty());
}

#[test]
fn auto_delete_when_the_last_binding_goes_and_cascades() {
    let mut ex = Exchanges::new();
    let auto = ExchangeSpec {
        auto_delete: true,
        ..ExchangeSpec::new(ExchangeKind::Fanout)
    };
    ex.declare("outer", auto.clone(), false).unwrap();
    ex.declare("inner", auto.clone(), false).unwrap();
    // Never bound: an auto-delete exchange stays until it loses a binding.
    ex.bind(binding("outer", x("inner"), "")).unwrap();
    ex.bind(binding("inner", q("q1"), "")).unwrap();
    ex.bind(binding("inner", q("q2"), "")).unwrap();
    assert!(ex
        .unbind(&binding("inner", q("q1"), ""))
        .unwrap()
        .is_empty());
    // q2 deleted: inner loses its last binding, goes, and takes outer's last binding with it.
    let mut gone = ex.remove_destination(&q("q2"));
    gone.sort();
    assert_eq!(gone, ["inner", "outer"]);
    assert!(!ex.exists("outer"));
    assert!(ex.inbound.is_empty());
}

#[test]
fn topic_and_headers_through_the_table() {
    let mut ex = Exchanges::new();
    ex.bind(binding("amq.topic", q("orange"), "*.orange.*"))
        .unwrap();
    ex.bind(binding("amq.topic", q("lazy"), "lazy.#")).unwrap();
    assert_eq!(route(&ex, "amq.topic", &["quick.orange.fox"]), ["orange"]);
    assert_eq!(
        route(&ex, "amq.topic", &["lazy.orange.fox"]),
        ["lazy", "orange"]
    );
    let mut any = binding("amq.headers", q("h"), "");
    any.args = BindingArgs::new(vec![
        ("x-match".into(), HeaderValue::Str("any".into())),
        ("a".into(), HeaderValue::Str("1".into())),
    ]);
    ex.bind(any).unwrap();
    let headers = || Some([("a".to_string(), HeaderValue::Str("1".into()))].into());
    assert_eq!(ex.route("amq.headers", &["k"], &headers).unwrap(), ["h"]);
    assert!(ex
        .route("amq.headers", &["k"], &|| None)
        .unwrap()
        .is_empty());
    // Only a headers exchange asks for the headers.
    let asked = std::cell::Cell::new(false);
    let spy = || {
        asked.set(true);
        None
    };
    ex.route("amq.topic", &["k"], &spy).unwrap();
    assert!(!asked.get());
    let mut bad = binding("amq.match", q("h"), "");
    bad.args = BindingArgs::new(vec![("x-match".into(), HeaderValue::Str("most".into()))]);
    assert!(matches!(
        ex.bind(bad),
        Err(ExchangeError::PreconditionFailed(_))
    ));
}

#[test]
fn unbinding_what_is_not_there_succeeds_as_in_rabbitmq() {
    let mut ex = Exchanges::new();
    declare(&mut ex, "src", ExchangeKind::Direct);
    // No such binding, no such source, no such destination exchange: all already unbound.
    assert_eq!(
        ex.unbind(&binding("src", q("q"), "k")).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        ex.unbind(&binding("missing", q("q"), "k")).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        ex.unbind(&binding("src", x("missing"), "k")).unwrap(),
        Vec::<String>::new()
    );
    // Binding still needs both ends; the default exchange is refused either way.
    assert!(matches!(
        ex.bind(binding("missing", q("q"), "k")),
        Err(ExchangeError::NotFound { .. })
    ));
    assert!(matches!(
        ex.unbind(&binding("", q("q"), "k")),
        Err(ExchangeError::AccessRefused(_))
    ));
}
