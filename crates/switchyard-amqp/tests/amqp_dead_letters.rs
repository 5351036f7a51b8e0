//! Ten thousand dead letters kept on RabbitMQ with nobody listening, listed by cause and
//! replayed at 500/s through a consumer with an inbox: each event handled once
//! (`testkit::dead_letters_replayed_once`).

use std::sync::Arc;

use switchyard_amqp::AmqpTransport;
use switchyard_core::testkit::{dead_letters_replayed_once, require_server};
use switchyard_core::transport::Transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_dead_letters_replayed_once_at_500_a_second() {
    if !require_server("amqp_dead_letters", "RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let url = format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?ns=dlq{}&queue_expires_ms=120000",
        &switchyard_core::message::new_id()[..8]
    );
    dead_letters_replayed_once(
        || Arc::new(AmqpTransport::from_url(&url).expect("url")) as Arc<dyn Transport>,
        10_000,
        100,
        500.0,
    )
    .await;
}
