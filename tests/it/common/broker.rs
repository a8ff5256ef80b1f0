//! The test broker: librdkafka's in-process mock cluster by default, or an
//! external Kafka-protocol broker named by `ALERTSVC_TEST_BOOTSTRAP` (a real
//! Kafka to prove exactly-once across crashes, or tansu in CI).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub const EXTERNAL_BOOTSTRAP_ENV: &str = "ALERTSVC_TEST_BOOTSTRAP";

pub enum Broker {
    Mock(MockCluster<'static, DefaultProducerContext>),
    External(String),
}

impl Broker {
    pub fn start() -> Broker {
        match std::env::var(EXTERNAL_BOOTSTRAP_ENV) {
            Ok(bootstrap) if !bootstrap.is_empty() => Broker::External(bootstrap),
            _ => Broker::Mock(MockCluster::new(1).expect("mock cluster")),
        }
    }

    /// The mock cluster, to inject request errors; `None` against an
    /// external broker.
    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        match self {
            Broker::Mock(cluster) => Some(cluster),
            Broker::External(_) => None,
        }
    }

    pub fn is_external(&self) -> bool {
        matches!(self, Broker::External(_))
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(cluster) => cluster.bootstrap_servers(),
            Broker::External(bootstrap) => bootstrap.clone(),
        }
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        match self {
            Broker::Mock(cluster) => cluster
                .create_topic(name, partitions, 1)
                .unwrap_or_else(|e| panic!("create topic {name}: {e}")),
            Broker::External(bootstrap) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", bootstrap)
                    .create()
                    .expect("admin client");
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
                let results = admin
                    .create_topics([&topic], &options)
                    .await
                    .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
                for result in results {
                    if let Err((topic, code)) = result {
                        panic!("create topic {topic}: {code}");
                    }
                }
            }
        }
    }
}
