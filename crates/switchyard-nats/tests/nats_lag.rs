//! Consumer lag as NATS tells it (`Subscriber::lag`), and as `switchyard_consumer_lag` for a
//! served service: the case is `testkit::consumer_lag`.

use std::sync::Arc;

use switchyard_core::testkit::{consumer_lag, require_server};
use switchyard_nats::NatsTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_of_a_group_is_what_it_has_not_been_given() {
    if !require_server("nats_consumer_lag", "NATS", "127.0.0.1:4222") {
        return;
    }
    let id = &switchyard_core::message::new_id()[..8];
    let url = format!("nats://127.0.0.1:4222/lag{id}");
    consumer_lag(Arc::new(NatsTransport::from_url(&url).expect("url")), id).await;
}
