//! `cartbus broker setup`: declares every queue cartbus uses on the broker — carts, their
//! dead letters, and with the fulfilment hand-off on the status, audit and partner queues
//! — and routes rejected carts to their dead-letter queue; it prints each thing it did.
//!
//! Through RabbitMQ's management API when `CARTBUS_BROKER_MANAGEMENT_URL` is set: it can
//! declare quorum queues (`CARTBUS_AMQP_QUEUE_TYPE=quorum`, what a cluster needs) and set
//! the dead-letter policy, neither of which AMQP 1.0 can. Without it, classic queues are
//! declared by a durable attach and the policy is printed for `rabbitmqctl`.

use serde_json::json;

use crate::config::{AmqpConfig, Config, QueueConfig, QueueType};
use crate::queue::amqp::management::{Declared, Management, queue_name};

/// A queue to declare: what it is for, and its address.
struct Wanted {
    purpose: String,
    address: String,
}

pub async fn setup(config: &Config, dead_letter_queue: Option<String>) -> anyhow::Result<()> {
    let QueueConfig::Amqp(broker) = &config.queue.backend else {
        anyhow::bail!("CARTBUS_QUEUE_URL names no broker (the embedded queue needs no set-up)");
    };
    let cart_address = &config.queue.cart_address;
    let cart = cart_address.rsplit('/').next().unwrap_or(cart_address);
    let dlq = dead_letter_queue.unwrap_or_else(|| format!("{cart}.dlq"));
    let prefix = &cart_address[..cart_address.len() - cart.len()];
    let wanted = wanted(config, &format!("{prefix}{dlq}"));
    match (&broker.management, broker.queue_type) {
        (Some(management), queue_type) => {
            let vhost = broker.nodes.first().and_then(|n| n.vhost.as_deref());
            let api = Management::new(management.clone(), vhost)?;
            println!("through the management API at {}", api.endpoints());
            declare_through(&api, &wanted, queue_type).await?;
            let policy = format!("{cart}-dlx");
            api.set_policy(
                &policy,
                &format!("^{}$", regex_escape(cart)),
                json!({ "dead-letter-exchange": "", "dead-letter-routing-key": dlq }),
            )
            .await?;
            println!("policy {policy}: carts the consumer rejects go to {dlq}");
            warn_declaring_addresses(&wanted, queue_type);
            Ok(())
        }
        (None, QueueType::Quorum) => anyhow::bail!(
            "quorum queues can only be declared through RabbitMQ's management API (AMQP 1.0 declares classic queues): set CARTBUS_BROKER_MANAGEMENT_URL, or declare them by hand (docs/brokers.md, \"Quorum queues\")"
        ),
        (None, QueueType::Classic) => declare_by_attach(broker, config, &wanted, cart, &dlq).await,
    }
}

/// Carts, their dead letters and, with the hand-off on, status replies, audit copies and
/// each partner's queue.
fn wanted(config: &Config, dlq_address: &str) -> Vec<Wanted> {
    let mut wanted = vec![
        Wanted {
            purpose: "carts".into(),
            address: config.queue.cart_address.clone(),
        },
        Wanted {
            purpose: "carts dead-lettered by the broker".into(),
            address: dlq_address.to_string(),
        },
    ];
    let fulfilment = &config.fulfilment;
    if fulfilment.enabled() {
        wanted.push(Wanted {
            purpose: "partners' status replies".into(),
            address: fulfilment.status_address.clone(),
        });
        wanted.push(Wanted {
            purpose: "audit copies".into(),
            address: fulfilment.audit_address.clone(),
        });
        for (name, partner) in &fulfilment.partners {
            wanted.push(Wanted {
                purpose: format!("orders for partner {name}"),
                address: partner.address.clone(),
            });
        }
    }
    wanted
}

async fn declare_through(
    api: &Management,
    wanted: &[Wanted],
    queue_type: QueueType,
) -> anyhow::Result<()> {
    let kind = match queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    };
    for queue in wanted {
        let Some(name) = queue_name(&queue.address) else {
            println!(
                "skipped {} ({}): not a queue address, nothing to declare",
                queue.address, queue.purpose
            );
            continue;
        };
        let done = match api.declare(name, queue_type).await? {
            Declared::Created => "declared",
            Declared::Existed => "already there",
        };
        println!("{kind} queue {name} ({}): {done}", queue.purpose);
    }
    Ok(())
}

/// `/queue/NAME` declares a classic queue on attach, and so fails against a quorum queue
/// (RabbitMQ: inequivalent arg 'x-queue-type').
fn warn_declaring_addresses(wanted: &[Wanted], queue_type: QueueType) {
    if queue_type != QueueType::Quorum {
        return;
    }
    for queue in wanted.iter().filter(|q| q.address.starts_with("/queue/")) {
        println!(
            "warning: {} is a declaring address and will fail to attach to the quorum queue: use /amq/queue/{}",
            queue.address,
            &queue.address["/queue/".len()..]
        );
    }
}

/// Classic queues without the management API: a durable attach declares each.
async fn declare_by_attach(
    broker: &AmqpConfig,
    config: &Config,
    wanted: &[Wanted],
    cart: &str,
    dlq: &str,
) -> anyhow::Result<()> {
    for queue in wanted {
        crate::queue::amqp::declare(broker, &config.instance, &queue.address).await?;
        println!("declared (durable): {} ({})", queue.address, queue.purpose);
    }
    println!(
        "\nAMQP 1.0 cannot set policies (with CARTBUS_BROKER_MANAGEMENT_URL set, this command sets it). On RabbitMQ, route rejected carts to the dead-letter queue with:\n\n  \
         rabbitmqctl set_policy {cart}-dlx '^{cart}$' \\\n    \
         '{{\"dead-letter-exchange\":\"\",\"dead-letter-routing-key\":\"{dlq}\"}}' --apply-to queues\n\n\
         (add -p VHOST for a virtual host). Without it a rejected cart is still kept in cartbus's own dead_letters table."
    );
    Ok(())
}

/// `name` as a regular expression matching only itself.
fn regex_escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_queue_name_is_matched_literally() {
        assert_eq!(super::regex_escape("carts.v2"), "carts\\.v2");
        assert_eq!(super::regex_escape("checkout-carts"), "checkout-carts");
    }
}
