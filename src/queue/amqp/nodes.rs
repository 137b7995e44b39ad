//! Which broker node each connection is on. With several nodes (a cluster) every
//! connection tries them in turn from its own starting point and, when its node is lost,
//! starts from the next one; what each is on now is kept here for the admin API
//! (`/v1/admin/consumer`), the metrics (`cartbus_broker_connection_info`) and the log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::BrokerConnectionLabels;
use crate::queue::QueueConnection;

/// Open connections by name: the node each is on, and since when.
type Open = BTreeMap<String, (String, DateTime<Utc>)>;

/// The connections of one instance and their nodes; cheap to clone, shared.
#[derive(Clone, Debug, Default)]
pub struct NodeRegistry {
    open: Arc<Mutex<Open>>,
    gauge: Family<BrokerConnectionLabels, Gauge>,
}

impl NodeRegistry {
    /// Reports into `gauge`: 1 per open connection, labelled with its name and node.
    pub fn new(gauge: Family<BrokerConnectionLabels, Gauge>) -> NodeRegistry {
        NodeRegistry {
            open: Arc::default(),
            gauge,
        }
    }

    /// `connection` is now open on `node` (replacing what it was on before).
    pub(super) fn connected(&self, connection: &str, node: &str) {
        let before = self
            .lock()
            .insert(connection.to_string(), (node.to_string(), Utc::now()));
        if let Some((old, _)) = before {
            self.gauge.remove(&labels(connection, &old));
        }
        self.gauge.get_or_create(&labels(connection, node)).set(1);
    }

    /// `connection` is closed or lost.
    pub(super) fn disconnected(&self, connection: &str) {
        if let Some((node, _)) = self.lock().remove(connection) {
            self.gauge.remove(&labels(connection, &node));
        }
    }

    /// Every open connection and its node, by name.
    pub fn connections(&self) -> Vec<QueueConnection> {
        self.lock()
            .iter()
            .map(|(connection, (node, since))| QueueConnection {
                connection: connection.clone(),
                node: node.clone(),
                since: *since,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // A panic while holding this lock cannot leave the map half-written.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn labels(connection: &str, node: &str) -> BrokerConnectionLabels {
    BrokerConnectionLabels {
        connection: connection.to_string(),
        node: node.to_string(),
    }
}

/// The order in which a connection tries `nodes` nodes: from `start`, wrapping round.
pub(super) fn order(nodes: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..nodes).map(move |i| (start + i) % nodes.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tries_every_node_once_from_its_start() {
        assert_eq!(order(3, 1).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(order(3, 5).collect::<Vec<_>>(), vec![2, 0, 1]);
        assert_eq!(order(1, 7).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn a_connection_is_on_one_node_at_a_time() {
        let registry = NodeRegistry::default();
        registry.connected("publisher", "amqp://a:5672");
        registry.connected("publisher", "amqp://b:5672");
        registry.connected("receiver 0", "amqp://a:5672");
        let nodes: Vec<_> = registry
            .connections()
            .into_iter()
            .map(|c| (c.connection, c.node))
            .collect();
        assert_eq!(
            nodes,
            vec![
                ("publisher".to_string(), "amqp://b:5672".to_string()),
                ("receiver 0".to_string(), "amqp://a:5672".to_string()),
            ]
        );
        registry.disconnected("publisher");
        assert_eq!(registry.connections().len(), 1);
    }
}
