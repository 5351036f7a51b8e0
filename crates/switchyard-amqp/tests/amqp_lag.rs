//! Consumer lag as RabbitMQ tells it (`Subscriber::lag`), and as `switchyard_consumer_lag` for a
//! served service: the case is `testkit::consumer_lag`.

use std::sync::Arc;

use switchyard_amqp::AmqpTransport;
use switchyard_core::testkit::{consumer_lag, require_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_of_a_group_is_what_it_has_not_been_given() {
    if !require_server("amqp_consumer_lag", "RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let id = &switchyard_core::message::new_id()[..8];
    let url = format!("amqp://guest:guest@127.0.0.1:5672/%2f?ns=lag{id}&queue_expires_ms=60000");
    consumer_lag(Arc::new(AmqpTransport::from_url(&url).expect("url")), id).await;
}
