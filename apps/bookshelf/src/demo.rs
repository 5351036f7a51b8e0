//! `yard bookshelf demo`: the five services on loopback, driven through the gateway.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{json, Value};

use crate::serve::{start, BookshelfError, Options, Running, Which};

/// Starts the five services with `options` (each on a free port), adds three books through
/// the gateway, finishes two, prints what the views answer, then stops them all (each leaves
/// the registry). With `keep`, serves until it resolves before stopping.
pub async fn demo(
    options: Options,
    keep: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
) -> Result<(), BookshelfError> {
    let mut running: Vec<Running> = Vec::new();
    for which in Which::ALL {
        let mut o = options.clone();
        o.port = 0;
        match start(which, o).await {
            Ok(r) => {
                println!("{:<14} {}", which.name(), r.url());
                running.push(r);
            }
            Err(e) => {
                stop_all(running).await;
                return Err(e);
            }
        }
    }
    let gateway = running
        .iter()
        .find(|r| r.which() == Which::Gateway)
        .map(|r| r.url().to_string())
        .unwrap_or_default();
    if let Err(e) = drive(&gateway).await {
        eprintln!("bookshelf demo: {e}");
    }
    if let Some(until) = keep {
        println!("serving until Ctrl-C; the gateway is at {gateway}/bookshelf/books");
        until.await;
    }
    stop_all(running).await;
    Ok(())
}

async fn stop_all(running: Vec<Running>) {
    // The gateway first, then the services it calls.
    for r in running.into_iter().rev() {
        if let Err(e) = r.stop().await {
            eprintln!("bookshelf demo: stopping: {e}");
        }
    }
}

/// GETs `url` until `done` says yes or five seconds passed: the views follow the log a moment
/// behind the aggregates.
async fn poll(
    http: &reqwest::Client,
    url: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, reqwest::Error> {
    let mut answer = Value::Null;
    for _ in 0..50 {
        answer = http.get(url).send().await?.json().await?;
        if done(&answer) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(answer)
}

async fn drive(gateway: &str) -> Result<(), reqwest::Error> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (title, author) in [
        ("Antifragile", "Nassim Nicholas Taleb"),
        ("Building Microservices", "Sam Newman"),
        ("Enterprise Integration Patterns", "Gregor Hohpe"),
    ] {
        let added: Value = http
            .post(format!("{gateway}/bookshelf/books"))
            .json(&json!({ "title": title, "author": author }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        println!("added {title}: {added}");
        ids.push(added["id"].as_str().unwrap_or_default().to_string());
    }
    for id in ids.iter().take(2) {
        let status = http
            .post(format!("{gateway}/bookshelf/books/{id}/finished"))
            .send()
            .await?
            .status();
        println!("finished {id}: {status}");
    }
    let last = poll(
        &http,
        &format!("{gateway}/bookshelf/books/last/read"),
        |v| v.as_array().is_some_and(|a| a.len() >= 2),
    )
    .await?;
    println!("last read: {last}");
    let all = poll(&http, &format!("{gateway}/bookshelf/books"), |v| {
        v.as_array().is_some_and(|a| a.len() >= ids.len())
    })
    .await?;
    println!("books on the shelf: {}", all.as_array().map_or(0, Vec::len));
    Ok(())
}
