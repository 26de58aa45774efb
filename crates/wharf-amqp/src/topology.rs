//! exchange.declare / delete / bind / unbind and queue.bind / unbind: the methods that change the routing
//! topology. Each translates its frame for `wharf_core` (which holds every rule) and answers; failures
//! come back as a [`Fault`] (channel errors 403 / 404 / 405 / 406, or 503 for an unknown exchange type).

use std::sync::Arc;

use amq_protocol::protocol::{exchange, queue, AMQPClass};
use wharf_core::exchanges::{ExchangeKind, ExchangeSpec};

use crate::channel::channel_mut;
use crate::reply::Fault;
use crate::routing::{binding_args, exchange_spec};
use crate::session::Session;

/// An exchange-class method.
pub fn exchange_method(
    session: &mut Session,
    id: u16,
    method: exchange::AMQPMethod,
) -> Result<(), Fault> {
    let vhost = Arc::clone(&session.vhost);
    let reply = match method {
        exchange::AMQPMethod::Declare(d) => {
            let name = d.exchange.as_str();
            let spec = if d.passive {
                // A passive declare only asks whether the exchange exists; type and flags are ignored.
                ExchangeSpec::new(ExchangeKind::Direct)
            } else {
                exchange_spec(&d, vhost.name())?
            };
            vhost.declare_exchange(name, spec, d.passive)?;
            (!d.nowait).then_some(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}))
        }
        exchange::AMQPMethod::Delete(d) => {
            vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
            (!d.nowait).then_some(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}))
        }
        exchange::AMQPMethod::Bind(b) => {
            vhost.bind_exchange(
                true,
                b.destination.as_str(),
                b.source.as_str(),
                b.routing_key.as_str(),
                binding_args(&b.arguments),
            )?;
            (!b.nowait).then_some(exchange::AMQPMethod::BindOk(exchange::BindOk {}))
        }
        exchange::AMQPMethod::Unbind(u) => {
            vhost.bind_exchange(
                false,
                u.destination.as_str(),
                u.source.as_str(),
                u.routing_key.as_str(),
                binding_args(&u.arguments),
            )?;
            (!u.nowait).then_some(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}))
        }
        // declare-ok and the other replies only the server sends (RabbitMQ 3.10.8's answer).
        _ => return Err(Fault::unimplemented_method()),
    };
    if let Some(reply) = reply {
        session.send(id, AMQPClass::Exchange(reply));
    }
    Ok(())
}

/// queue.bind (`bind`) or queue.unbind. An empty queue name means the channel's last declared queue, and
/// then an empty routing key means that queue's name too (AMQP 0-9-1, queue.bind).
pub fn queue_binding(
    session: &mut Session,
    id: u16,
    bind: bool,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: &amq_protocol::types::FieldTable,
) -> Result<(), Fault> {
    let vhost = Arc::clone(&session.vhost);
    let name = channel_mut(session, id)?.queue_name(queue)?;
    let key = if queue.is_empty() && routing_key.is_empty() {
        name.as_str()
    } else {
        routing_key
    };
    vhost.bind_queue(
        session.id,
        bind,
        &name,
        exchange,
        key,
        binding_args(arguments),
    )?;
    Ok(())
}

/// Sends bind-ok / unbind-ok (the caller knows whether nowait applies: queue.unbind has none).
pub fn reply_bound(session: &mut Session, id: u16, method: queue::AMQPMethod) {
    session.send(id, AMQPClass::Queue(method));
}
