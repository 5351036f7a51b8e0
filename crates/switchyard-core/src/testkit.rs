//! The conformance suite: every transport must pass it before it is considered ready
//! (Watermill's `TestPubSub`, in Rust). A transport supplies a [`Harness`] and invokes
//! [`conformance_suite!`](crate::conformance_suite); each case checks the transport's declared
//! [`Capabilities`] and says loudly when and why it skips.
//!
//! ```ignore
//! fn harness() -> switchyard_core::testkit::Harness {
//!     Harness::new(|| format!("mem://conformance-{}", uuid()), |url| Ok(Arc::new(MemTransport::from_url(url)?)))
//! }
//! switchyard_core::conformance_suite!(harness());
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::consumer::ConsumerPolicy;
use crate::error::{CallError, TransportError};
use crate::handler::rpc;
use crate::message::{header, Envelope};
use crate::service::Service;
use crate::transport::{
    Capabilities, DeliveryGuarantee, Ordering, SubscribeOptions, Subscription, Transport,
};

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transport did what it promised.
    Passed,
    /// The case does not apply; the reason names the capability or harness setting.
    Skipped(String),
}

type ConnectFn = dyn Fn(&str) -> Result<Arc<dyn Transport>, TransportError> + Send + Sync;

/// How a case reaches the transport under test. Test settings live here, not in
/// [`Capabilities`].
#[derive(Clone)]
pub struct Harness {
    fresh_url: Arc<dyn Fn() -> String + Send + Sync>,
    connect: Arc<ConnectFn>,
    /// Messages in the round-trip case (default 10,000).
    pub messages: usize,
    /// Restarts the server for the reconnect case; `None` skips that case.
    pub restart: Option<Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>>,
    /// How long a case waits for messages before it fails (default 60 s).
    pub patience: Duration,
    /// Why the server under test cannot be reached, if it cannot: every case then skips
    /// loudly, or fails when `SWITCHYARD_REQUIRE_ALL` is set (as in CI).
    pub unavailable: Option<String>,
}

impl Harness {
    /// A harness: `fresh_url` gives a URL no other case uses (a new bus, port or vhost);
    /// `connect` opens a transport on a URL (called several times per case for publishers,
    /// subscribers and servers).
    pub fn new(
        fresh_url: impl Fn() -> String + Send + Sync + 'static,
        connect: impl Fn(&str) -> Result<Arc<dyn Transport>, TransportError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            fresh_url: Arc::new(fresh_url),
            connect: Arc::new(connect),
            messages: 10_000,
            restart: None,
            patience: Duration::from_secs(60),
            unavailable: None,
        }
    }

    /// Marks the server as unreachable when nothing accepts TCP connections at `addr`.
    pub fn require_tcp(mut self, name: &str, addr: &str) -> Self {
        if !tcp_reachable(addr) {
            self.unavailable = Some(format!("{name} is not reachable at {addr}"));
        }
        self
    }

    /// Skips (loudly) or fails the case when the server is unreachable; `true` to go on.
    pub fn available(&self, case: &str) -> bool {
        match &self.unavailable {
            None => true,
            Some(why) => skip_or_fail(case, why),
        }
    }

    fn open(&self) -> (String, Arc<dyn Transport>) {
        let url = (self.fresh_url)();
        let t = self.connect(&url);
        (url, t)
    }

    fn connect(&self, url: &str) -> Arc<dyn Transport> {
        match (self.connect)(url) {
            Ok(t) => t,
            Err(e) => panic!("harness cannot connect to {url}: {e}"),
        }
    }
}

/// For a test that stops and starts a server: waits until something listens at `addr`
/// (`up`) or nothing does (`!up`); panics naming `name` after 30 s.
pub fn wait_for_port(name: &str, addr: &str, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let listening = || {
        addr.parse().is_ok_and(|a| {
            std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok()
        })
    };
    while listening() != up {
        assert!(
            Instant::now() < deadline,
            "{name} did not {} in 30 s",
            if up { "come back" } else { "stop" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tcp_reachable(addr: &str) -> bool {
    addr.parse()
        .is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// For a test that needs a real server: `true` when something listens at `addr`; otherwise
/// the test is skipped loudly (`false`), or fails when `SWITCHYARD_REQUIRE_ALL` is set, as in
/// CI, where a broker that cannot be reached is a failure and never a skip.
pub fn require_server(test: &str, name: &str, addr: &str) -> bool {
    tcp_reachable(addr) || skip_or_fail(test, &format!("{name} is not reachable at {addr}"))
}

/// For a test whose server or program is missing: skips it loudly (`false`), or fails it under
/// `SWITCHYARD_REQUIRE_ALL`.
pub fn skip_or_fail(test: &str, why: &str) -> bool {
    if std::env::var_os("SWITCHYARD_REQUIRE_ALL").is_some() {
        panic!("{test}: {why}, and SWITCHYARD_REQUIRE_ALL makes broker tests mandatory (run scripts/services.sh)");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED broker test {test}: {why} (set SWITCHYARD_REQUIRE_ALL=1 to make this a failure)"
    );
    false
}

/// For a test that starts a server program itself: `true` when `program` can be run;
/// otherwise the test is skipped loudly, or fails under `SWITCHYARD_REQUIRE_ALL`.
pub fn require_program(test: &str, program: &str) -> bool {
    let runs = std::process::Command::new(program)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    runs || skip_or_fail(test, &format!("{program} cannot be run"))
}

/// Waits up to `within` for `done` to hold, looking every 50 ms; panics naming `what` if it
/// does not.
pub async fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls `route` with `args` until it is answered, for at most `within` (a service coming back
/// after its broker restarted, say); panics with the last error if it is not.
pub async fn answered<A, R>(client: &Client, route: &str, args: A, within: Duration) -> R
where
    A: Serialize + Clone + Send + 'static,
    R: serde::de::DeserializeOwned + 'static,
{
    let deadline = Instant::now() + within;
    loop {
        match client.call::<A, R>(route, args.clone()).await {
            Ok(r) => return r,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{route} not answered within {within:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Starts `program` with `args` as a server of the test's own, its output dropped, and
/// waits until it listens on `port` (loopback); killed when the result is dropped.
pub fn start_server(program: &str, args: &[&str], port: u16) -> Killed {
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    wait_for_port(program, &format!("127.0.0.1:{port}"), true);
    Killed(child)
}

/// The value of the first series of metric `name` whose labels include all of `labels`
/// (each written `key="value"`), in a Prometheus text scrape.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let series = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&series))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A TCP proxy in front of a server, for the reconnect case where the server cannot be
/// restarted without losing what it stores (Tansu keeps memory only): [`CutProxy::cut`] closes
/// every proxied connection and refuses new ones for a while, which a client sees as the
/// server going down and coming back. Written here because a proxy whose connections a test
/// can drop is a few lines over tokio's `copy_bidirectional`, and no test crate offers one.
#[derive(Debug)]
pub struct CutProxy {
    port: u16,
    target: std::net::SocketAddr,
    // The accept loop and every proxied connection; aborting a task drops its sockets.
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub async fn start(target: std::net::SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let proxy = Self {
            port,
            target,
            tasks: Arc::new(Mutex::new(tokio::task::JoinSet::new())),
        };
        proxy.accept(listener);
        Ok(proxy)
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn accept(&self, listener: tokio::net::TcpListener) {
        let (tasks, target) = (Arc::downgrade(&self.tasks), self.target);
        let accept = async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Some(tasks) = tasks.upgrade() else { return };
                let forward = async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                };
                tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .spawn(forward);
            }
        };
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(accept);
    }

    /// Closes every connection, refuses new ones for `outage`, then accepts again on the same
    /// port.
    pub async fn cut(&self, outage: Duration) {
        let old = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        drop(old); // a dropped JoinSet aborts its tasks
        tokio::time::sleep(outage).await;
        // The old listener's socket is released once its aborted task is dropped.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries == 100 => {
                    panic!("the proxy cannot listen again on {}: {e}", self.port)
                }
                Err(_) => tries += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.accept(listener);
    }
}

/// A child process (a server a test started) killed and reaped when dropped.
#[derive(Debug)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A certificate authority and a server certificate for `127.0.0.1` signed by it, made with
/// the `openssl` program in a folder of their own (removed on drop), readable by a server that
/// drops privileges: for TLS tests against real servers.
#[derive(Debug)]
pub struct TestCertificates {
    dir: std::path::PathBuf,
}

impl TestCertificates {
    /// Makes them; `None` (after a loud skip, or a failure under `SWITCHYARD_REQUIRE_ALL`)
    /// when `openssl` cannot be run.
    pub fn create(test: &str) -> Option<Self> {
        if !require_program(test, "openssl") {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("sy-tls-{}", &crate::message::new_id()[..8]));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=switchyard test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ]);
        // Readable by a server started as root that drops to its own user (Mosquitto does).
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [
            (dir.clone(), 0o755),
            (dir.join("ca.pem"), 0o644),
            (dir.join("server.pem"), 0o644),
            (dir.join("server.key"), 0o644),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        Some(Self { dir })
    }

    /// The CA's certificate (PEM): what a client must trust.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's certificate (PEM).
    pub fn cert(&self) -> std::path::PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key(&self) -> std::path::PathBuf {
        self.dir.join("server.key")
    }

    /// The folder holding them (for a server's configuration file).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// Consumer lag as the broker tells it ([`Subscriber::lag`](crate::transport::Subscriber::lag)),
/// on a transport whose broker does: of 5 messages published to a group that took one, 3 to 5
/// are reported not given (or not committed) yet, then none once all are handled; and a served service whose
/// handler is held reports `switchyard_consumer_lag` for its topic (metrics are installed
/// here). `id` keeps the topics apart. Panics with what failed.
pub async fn consumer_lag(t: Arc<dyn Transport>, id: &str) {
    let topic = format!("lag.t{id}");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::group("lagging").prefetch(1))
        .await
        .expect("subscribe");
    for i in 0..5 {
        t.publish(Envelope::new(&topic, format!("{i}")))
            .await
            .expect("publish");
    }
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery")
        .expect("open")
        .expect("delivery");
    // 5 published, 1 or 2 given: 3 or 4 not given yet; 5 on a broker that counts what the
    // group has not committed (Kafka: a delivery is committed once acknowledged).
    let lag = lag_until(t.as_ref(), &topic, "lagging", |l| l <= 5).await;
    assert!(
        (3..=5).contains(&lag),
        "5 published, 1 or 2 given: lag {lag}"
    );
    first.ack().await.expect("ack");
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a delivery")
            .expect("open")
            .expect("delivery");
        d.ack().await.expect("ack");
    }
    assert_eq!(
        lag_until(t.as_ref(), &topic, "lagging", |l| l == 0).await,
        0
    );

    // Served: the gauge follows, per service and topic.
    crate::observe::install_prometheus().expect("metrics");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let service_topic = format!("lag.s{id}");
    // Two at a time: the rest of what is published waits at the broker, not given yet.
    let policy = crate::policy::ConsumerPolicy {
        concurrency: 2,
        ..Default::default()
    };
    let service = Service::new(format!("lagger{id}"))
        .consumer_policy(policy)
        .on_event(&service_topic, move |_: u32| {
            let g = g.clone();
            async move {
                // Held until the test lets it go: what is published meanwhile waits.
                let _ = g.acquire().await.map(|p| p.forget());
            }
        });
    let served = crate::server::serve(t.clone(), service)
        .await
        .expect("serve");
    for i in 0..40u32 {
        t.publish(Envelope::new(&service_topic, i.to_string()))
            .await
            .expect("publish");
    }
    let reported = || {
        crate::observe::render()
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("switchyard_consumer_lag{") && l.contains(&service_topic))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = reported();
    while seen.is_none_or(|l| l < 1.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = reported();
    }
    assert!(
        seen.is_some_and(|l| l >= 1.0),
        "a lag reported while the handler is held: {seen:?}"
    );
    gate.add_permits(1_000);
    served.shutdown().await;
}

async fn lag_until(t: &dyn Transport, topic: &str, group: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lag = t
            .lag(topic, group)
            .await
            .expect("lag")
            .expect("the broker tells");
        if ok(lag) || Instant::now() > deadline {
            return lag;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Events and calls through a transport made for a connection option (TLS, credentials)
/// against a real server: a group subscription of `transport` receives what it publishes, and
/// `caller` calls a route `transport` serves. Panics with what failed.
pub async fn events_and_calls(transport: Arc<dyn Transport>, caller: Arc<dyn Transport>) {
    let topic = topic("option");
    let mut sub = transport
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    transport
        .publish(Envelope::new(topic.as_str(), r#"{"n":1}"#))
        .await
        .expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("delivered in time")
        .expect("subscription open")
        .expect("delivery");
    assert_eq!(&d.envelope.payload[..], br#"{"n":1}"#);
    d.ack().await.expect("ack");

    async fn hello(name: String) -> String {
        format!("Welcome {name}")
    }
    let service = Service::new("option").route("/hello", rpc(hello));
    let _served = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let reply: String = tokio::time::timeout(
        Duration::from_secs(10),
        Client::new(caller)
            .service("option")
            .call("/hello", "you".to_string()),
    )
    .await
    .expect("answered in time")
    .expect("call");
    assert_eq!(reply, "Welcome you");
}

/// `transport` cannot connect (`why` says what should stop it: an untrusted certificate, no
/// TLS), and its error names the server at `addr`.
pub async fn refused_naming(transport: &dyn Transport, addr: &str, why: &str) {
    let err = tokio::time::timeout(Duration::from_secs(15), transport.ready())
        .await
        .unwrap_or_else(|_| panic!("{why}: not refused within 15 s"))
        .expect_err(why);
    assert!(
        err.to_string().contains(addr),
        "{why}: the error does not name {addr}: {err}"
    );
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails the test on error; prints skips so that no capability gap goes unnoticed.
pub fn check(case: &str, outcome: Outcome) {
    match outcome {
        Outcome::Passed => {}
        Outcome::Skipped(why) => {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests, and
            // a skip must be seen.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED conformance case {case}: {why}");
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Numbered {
    n: usize,
    key: Option<String>,
}

fn numbered(topic: &str, n: usize, key: Option<String>) -> Envelope {
    let mut env = Envelope::new(
        topic,
        serde_json::to_vec(&Numbered {
            n,
            key: key.clone(),
        })
        .unwrap_or_default(),
    );
    if let Some(k) = key {
        env.headers.insert(header::ORDERING_KEY, k);
    }
    env
}

fn number_of(env: &Envelope) -> Option<Numbered> {
    serde_json::from_slice(&env.payload).ok()
}

/// Reads `sub`, acking everything, recording the numbers until `want` distinct ones arrived or
/// patience runs out.
async fn collect(
    mut sub: Subscription,
    want: usize,
    patience: Duration,
    ack_delay: Duration,
) -> Vec<Numbered> {
    let mut seen = Vec::new();
    let mut distinct = HashSet::new();
    let deadline = Instant::now() + patience;
    while distinct.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(Ok(d))) => {
                if let Some(num) = number_of(&d.envelope) {
                    distinct.insert(num.n);
                    seen.push(num);
                }
                if !ack_delay.is_zero() {
                    tokio::time::sleep(ack_delay).await;
                }
                let _ = d.ack().await;
            }
            // A transient error (a broker restarting) is not a loss; what was lost shows in
            // the numbers the caller checks.
            Ok(Some(Err(e))) => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "subscription error (continuing): {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(None) | Err(_) => break,
        }
    }
    seen
}

async fn publish_all(t: &Arc<dyn Transport>, envs: Vec<Envelope>, concurrency: usize) {
    futures::stream::iter(envs)
        .for_each_concurrent(concurrency, |env| {
            let t = t.clone();
            async move {
                let n = env.subject.clone();
                if let Err(e) = t.publish(env).await {
                    panic!("publish on {n} failed: {e}");
                }
            }
        })
        .await;
}

fn topic(name: &str) -> String {
    format!("conformance.{name}.{}", &crate::message::new_id()[..8])
}

/// Publish/subscribe round trip of `h.messages` messages: none lost, none duplicated beyond
/// the declared guarantee.
pub async fn round_trip(h: &Harness) -> Outcome {
    let (url, publisher) = h.open();
    let subscriber = h.connect(&url);
    let t = topic("round_trip");
    let sub = subscriber
        .subscribe(&t, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    let n = h.messages;
    let reader = tokio::spawn(collect(sub, n, h.patience, Duration::ZERO));
    publish_all(
        &publisher,
        (0..n).map(|i| numbered(&t, i, None)).collect(),
        64,
    )
    .await;
    let seen = reader.await.expect("reader");
    let distinct: HashSet<usize> = seen.iter().map(|x| x.n).collect();
    let missing: Vec<usize> = (0..n).filter(|i| !distinct.contains(i)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} messages lost, first: {missing:?}",
        n - distinct.len()
    );
    let duplicates = seen.len() - distinct.len();
    if publisher.capabilities().delivery == DeliveryGuarantee::AtMostOnce {
        assert_eq!(
            duplicates, 0,
            "an at-most-once transport delivered duplicates"
        );
    }
    Outcome::Passed
}

/// Messages with the same ordering key arrive in publish order.
pub async fn per_key_order(h: &Harness) -> Outcome {
    let (url, publisher) = h.open();
    let caps: Capabilities = publisher.capabilities();
    if caps.ordering == Ordering::None {
        return Outcome::Skipped("capabilities.ordering is None".into());
    }
    let subscriber = h.connect(&url);
    let t = topic("order");
    let sub = subscriber
        .subscribe(&t, SubscribeOptions::group("g").prefetch(1))
        .await
        .expect("subscribe");
    let per_key = 200;
    let keys = 5;
    let reader = tokio::spawn(collect(sub, per_key * keys, h.patience, Duration::ZERO));
    let envs = (0..per_key * keys)
        .map(|i| numbered(&t, i, Some(format!("k{}", i % keys))))
        .collect();
    publish_all(&publisher, envs, 1).await;
    let seen = reader.await.expect("reader");
    let mut last: HashMap<String, usize> = HashMap::new();
    for m in seen {
        let key = m.key.unwrap_or_default();
        if let Some(prev) = last.get(&key) {
            assert!(m.n > *prev, "key {key}: {} arrived after {prev}", m.n);
        }
        last.insert(key, m.n);
    }
    Outcome::Passed
}

/// Two members of one group share the messages, and each message is handled once.
pub async fn competing_consumers(h: &Harness) -> Outcome {
    let (url, publisher) = h.open();
    if !publisher.capabilities().consumer_groups {
        return Outcome::Skipped("capabilities.consumer_groups is false".into());
    }
    let t = topic("competing");
    let a = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("workers").prefetch(1))
        .await
        .expect("subscribe a");
    let b = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("workers").prefetch(1))
        .await
        .expect("subscribe b");
    let n = 200;
    // The distinct numbers the group has seen: readers stop when it holds all of them. (A
    // count of deliveries stopped them early when a rebalance redelivered some: duplicates
    // made up the count, and the test reported the rest as lost.)
    type Seen = Arc<std::sync::Mutex<HashSet<usize>>>;
    let seen: Seen = Arc::default();
    let spawn_reader = |sub: Subscription, seen: Seen, patience: Duration| {
        tokio::spawn(async move {
            let mut sub = sub;
            let mut mine = Vec::new();
            let deadline = Instant::now() + patience;
            let all_seen = |seen: &Seen| seen.lock().unwrap_or_else(|p| p.into_inner()).len() >= n;
            while !all_seen(&seen) {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200));
                match tokio::time::timeout(left, sub.next()).await {
                    Ok(Some(Ok(d))) => {
                        if let Some(m) = number_of(&d.envelope) {
                            mine.push(m.n);
                            seen.lock().unwrap_or_else(|p| p.into_inner()).insert(m.n);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let _ = d.ack().await;
                    }
                    Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
                    Ok(None) => break,
                    Err(_) if Instant::now() >= deadline => break,
                    Err(_) => {}
                }
            }
            mine
        })
    };
    let ra = spawn_reader(a, seen.clone(), h.patience);
    let rb = spawn_reader(b, seen.clone(), h.patience);
    publish_all(
        &publisher,
        (0..n).map(|i| numbered(&t, i, None)).collect(),
        8,
    )
    .await;
    let (got_a, got_b) = (ra.await.expect("reader a"), rb.await.expect("reader b"));
    let mut all: Vec<usize> = got_a.iter().chain(&got_b).copied().collect();
    all.sort_unstable();
    let distinct: Vec<usize> = {
        let mut d = all.clone();
        d.dedup();
        d
    };
    assert_eq!(
        distinct.len(),
        n,
        "messages lost: got {} of {n} (one member {}, the other {})",
        distinct.len(),
        got_a.len(),
        got_b.len()
    );
    if publisher.capabilities().delivery == DeliveryGuarantee::AtMostOnce {
        assert_eq!(all.len(), n, "a message went to both members of the group");
    }
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "one member got everything: {} vs {}",
        got_a.len(),
        got_b.len()
    );
    Outcome::Passed
}

/// Every broadcast subscriber gets every message published after it subscribed, and none
/// published before.
pub async fn broadcast(h: &Harness) -> Outcome {
    let (url, publisher) = h.open();
    if !publisher.capabilities().broadcast {
        return Outcome::Skipped("capabilities.broadcast is false".into());
    }
    let t = topic("broadcast");
    let n = 50;
    // Published (many at once, so in batches) before anyone subscribed: nobody gets these.
    // A transport with nobody to take them (HTTP) refuses them, which is as good.
    futures::stream::iter((1000..1100).map(|i| numbered(&t, i, None)))
        .for_each_concurrent(64, |env| {
            let publisher = publisher.clone();
            async move {
                let _ = publisher.publish(env).await;
            }
        })
        .await;
    let a = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::broadcast())
        .await
        .expect("subscribe a");
    let b = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::broadcast())
        .await
        .expect("subscribe b");
    let ra = tokio::spawn(collect(a, n, h.patience, Duration::ZERO));
    let rb = tokio::spawn(collect(b, n, h.patience, Duration::ZERO));
    publish_all(
        &publisher,
        (0..n).map(|i| numbered(&t, i, None)).collect(),
        1,
    )
    .await;
    for (name, r) in [("a", ra), ("b", rb)] {
        let got: HashSet<usize> = r.await.expect("reader").into_iter().map(|m| m.n).collect();
        let old: Vec<&usize> = got.iter().filter(|m| **m >= 1000).collect();
        assert!(
            old.is_empty(),
            "broadcast subscriber {name} got {} messages published before it subscribed",
            old.len()
        );
        assert_eq!(
            got.len(),
            n,
            "broadcast subscriber {name} got {} of {n}",
            got.len()
        );
    }
    Outcome::Passed
}

async fn echo(text: String) -> String {
    text
}

/// RPC round trip, and a call to a slow handler times out on time.
pub async fn rpc_with_timeout(h: &Harness) -> Outcome {
    let (_url, transport) = h.open();
    if !transport.capabilities().request_reply {
        return Outcome::Skipped("capabilities.request_reply is false".into());
    }
    let service = Service::new("conformance-rpc")
        .route("/echo", rpc(echo))
        .route(
            "/slow",
            rpc(|| async { tokio::time::sleep(Duration::from_secs(30)).await }),
        );
    let server = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let client = Client::new(h.connect(server.url()))
        .service("conformance-rpc")
        .with_timeout(Duration::from_secs(10));
    let reply: String = client
        .call("/echo", "ping".to_string())
        .await
        .expect("echo");
    assert_eq!(reply, "ping");
    let started = Instant::now();
    let err = client
        .request("/slow")
        .timeout(Duration::from_millis(300))
        .send::<()>()
        .await
        .expect_err("the slow call must time out");
    let took = started.elapsed();
    assert!(
        matches!(err, CallError::Timeout { .. }),
        "expected a timeout, got {err}"
    );
    assert!(
        took < Duration::from_secs(3),
        "timeout fired after {took:?}"
    );
    let missing = client
        .call::<_, ()>("/no-such-route", ())
        .await
        .expect_err("unknown route");
    assert_eq!(
        missing.remote_code(),
        Some(crate::error::ErrorCode::NotFound),
        "{missing}"
    );
    server.shutdown().await;
    Outcome::Passed
}

/// A call to a service that is not there fails fast with a clear error, not a timeout.
pub async fn rpc_to_absent_service_fails_fast(h: &Harness) -> Outcome {
    let (_url, transport) = h.open();
    if !transport.capabilities().request_reply {
        return Outcome::Skipped("capabilities.request_reply is false".into());
    }
    let client = Client::new(transport)
        .service("conformance-absent")
        .with_timeout(Duration::from_secs(20));
    let started = Instant::now();
    let err = client
        .call::<_, String>("/echo", "x".to_string())
        .await
        .expect_err("nobody serves");
    assert!(
        matches!(err, CallError::Unreachable { .. }),
        "expected Unreachable, got {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    Outcome::Passed
}

/// A failing handler is retried with backoff; after `max_attempts` the message goes to the
/// dead-letter topic with the error in its headers. A payload that cannot decode goes there
/// at once.
pub async fn retry_then_dead_letter(h: &Harness) -> Outcome {
    let (url, transport) = h.open();
    if !transport.capabilities().redelivery {
        return Outcome::Skipped("capabilities.redelivery is false".into());
    }
    let t = topic("dlq");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = Service::new("conformance-dlq")
        .consumer_policy(ConsumerPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            ..ConsumerPolicy::default()
        })
        .on_event(&t, move |_m: Numbered| {
            let c = c.clone();
            async move {
                c.fetch_add(1, AtomicOrdering::SeqCst);
                Err::<(), _>(crate::error::HandlerError::internal("always fails"))
            }
        });
    let mut dead = watch_dead_letters(h, &url, &t).await;
    let server = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let publisher = h.connect(&url);
    publisher
        .publish(numbered(&t, 7, None))
        .await
        .expect("publish");
    let d = tokio::time::timeout(h.patience, dead.next())
        .await
        .expect("dead letter within patience")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(number_of(&d.envelope).map(|m| m.n), Some(7));
    assert_eq!(d.envelope.headers.get(header::ERROR), Some("always fails"));
    assert_eq!(calls.load(AtomicOrdering::SeqCst), 3, "handler attempts");
    let _ = d.ack().await;
    // Poison: does not decode, so no retry.
    let mut poison = Envelope::new(&t, "not json at all");
    poison
        .headers
        .insert(header::CONTENT_TYPE, "application/json");
    publisher.publish(poison).await.expect("publish poison");
    let d = tokio::time::timeout(h.patience, dead.next())
        .await
        .expect("poison dead letter")
        .expect("stream open")
        .expect("delivery");
    let why = d
        .envelope
        .headers
        .get(header::ERROR)
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("does not decode"), "error header: {why}");
    assert_eq!(d.envelope.headers.attempt(), 1, "poison was retried");
    assert_eq!(
        calls.load(AtomicOrdering::SeqCst),
        3,
        "the poison message reached the handler"
    );
    let _ = d.ack().await;
    server.shutdown().await;
    Outcome::Passed
}

/// Dead letters made while nobody listens to the dead-letter topic are kept: a reader in
/// [`DEAD_LETTER_GROUP`](crate::middleware::dead_letter::DEAD_LETTER_GROUP) that subscribes
/// after the service stopped gets every one, each saying where it came from, why, when, and
/// with one fingerprint for one cause.
pub async fn dead_letter_kept_with_nobody_listening(h: &Harness) -> Outcome {
    use crate::middleware::dead_letter::{
        ATTEMPTS, DEAD_LETTER_GROUP, FAILED_AT, FINGERPRINT, FIRST_FAILED_AT, ORIGINAL_TOPIC,
    };
    let (url, transport) = h.open();
    let caps = transport.capabilities();
    if !caps.redelivery || !caps.keeps_for_later_groups {
        return Outcome::Skipped(
            "needs redelivery and messages kept for groups that join later".into(),
        );
    }
    let t = topic("kept");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = Service::new("conformance-kept")
        .consumer_policy(ConsumerPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(20),
            ..ConsumerPolicy::default()
        })
        .on_event(&t, move |_m: Numbered| {
            let c = c.clone();
            async move {
                c.fetch_add(1, AtomicOrdering::SeqCst);
                Err::<(), _>(crate::error::HandlerError::internal("always fails"))
            }
        });
    let server = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let total = 5;
    let publisher = h.connect(&url);
    publish_all(
        &publisher,
        (0..total).map(|n| numbered(&t, n, None)).collect(),
        2,
    )
    .await;
    let deadline = Instant::now() + h.patience;
    while calls.load(AtomicOrdering::SeqCst) < total * 2 {
        assert!(
            Instant::now() < deadline,
            "{} of {} attempts made",
            calls.load(AtomicOrdering::SeqCst),
            total * 2
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped: its last dead letters are published before it returns (a message is settled
    // only after its dead letter is).
    server.shutdown().await;
    let kept = h
        .connect(&url)
        .subscribe(
            &format!("{t}.dlq"),
            SubscribeOptions::group(DEAD_LETTER_GROUP),
        )
        .await
        .expect("subscribe to the kept dead letters");
    let mut kept = kept;
    let mut letters = Vec::new();
    while letters.len() < total {
        let d = tokio::time::timeout(h.patience, kept.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {total} dead letters kept", letters.len()))
            .expect("stream open")
            .expect("delivery");
        letters.push(d.envelope.clone());
        let _ = d.ack().await;
    }
    let mut numbers: Vec<usize> = letters
        .iter()
        .filter_map(|e| number_of(e).map(|m| m.n))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..total).collect::<Vec<_>>(), "dead letters kept");
    let fingerprints: HashSet<&str> = letters
        .iter()
        .map(|e| e.headers.get(FINGERPRINT).unwrap_or_default())
        .collect();
    assert_eq!(
        fingerprints.len(),
        1,
        "one cause, one fingerprint: {fingerprints:?}"
    );
    assert!(
        fingerprints.iter().all(|f| f.len() == 12),
        "{fingerprints:?}"
    );
    for e in &letters {
        assert_eq!(e.headers.get(ORIGINAL_TOPIC), Some(t.as_str()));
        assert_eq!(e.headers.get(header::ERROR), Some("always fails"));
        assert_eq!(e.headers.get(ATTEMPTS), Some("2"), "attempts made");
        let at = e.headers.get(FAILED_AT).unwrap_or_default();
        assert!(at.ends_with('Z') && at.contains('T'), "failed at {at:?}");
        let first = e.headers.get(FIRST_FAILED_AT).unwrap_or_default();
        // Two attempts 20 ms apart: the first failure's time came with the retry, except on
        // NATS, which redelivers the message it stored, not the one handed back.
        let carried = transport.name() != "nats";
        assert!(
            first.ends_with('Z') && (first < at || !carried && first == at),
            "first failed at {first:?}, last at {at:?}"
        );
    }
    Outcome::Passed
}

/// Two consumer groups on one topic, one of which retries every message once: the other
/// group gets each message once, never the first group's retries (a retry re-published where
/// every group reads would reach them all).
pub async fn retries_stay_in_their_group(h: &Harness) -> Outcome {
    let (url, publisher) = h.open();
    let caps = publisher.capabilities();
    if !caps.consumer_groups || !caps.redelivery {
        return Outcome::Skipped("needs consumer groups and redelivery".into());
    }
    let t = topic("groups");
    let retrying = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("retrying"))
        .await
        .expect("subscribe retrying");
    let other = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("other"))
        .await
        .expect("subscribe other");
    let total = 20;
    publish_all(
        &publisher,
        (0..total).map(|n| numbered(&t, n, None)).collect(),
        4,
    )
    .await;
    // The retrying group: every first attempt handed back, every second one settled.
    let retried = tokio::spawn({
        let patience = h.patience;
        async move {
            let mut retrying = retrying;
            let mut settled = HashSet::new();
            let deadline = Instant::now() + patience;
            while settled.len() < total {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some(Ok(d))) = tokio::time::timeout(left, retrying.next()).await else {
                    break;
                };
                if d.envelope.headers.attempt() <= 1 {
                    let _ = d.nack(Some(Duration::from_millis(10))).await;
                } else {
                    if let Some(m) = number_of(&d.envelope) {
                        settled.insert(m.n);
                    }
                    let _ = d.ack().await;
                }
            }
            settled.len()
        }
    });
    let settled = retried.await.expect("retrying group");
    assert_eq!(settled, total, "the retrying group settled its retries");
    // The other group, read after the retries were made: each message once.
    let mut seen = Vec::new();
    let mut other = other;
    loop {
        match tokio::time::timeout(Duration::from_millis(1_500), other.next()).await {
            Ok(Some(Ok(d))) => {
                if let Some(m) = number_of(&d.envelope) {
                    seen.push(m.n);
                }
                let _ = d.ack().await;
            }
            Ok(Some(Err(e))) => panic!("subscription error: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "the other group got each message once"
    );
    Outcome::Passed
}

/// Kept dead letters listed by cause and replayed once ([`dead_letters_replayed_once`] with
/// 200 events, 20 kept twice, at 2,000 a second).
pub async fn dead_letters_listed_and_replayed(h: &Harness) -> Outcome {
    let (url, transport) = h.open();
    let caps = transport.capabilities();
    if !caps.redelivery || !caps.keeps_for_later_groups {
        return Outcome::Skipped(
            "needs redelivery and messages kept for groups that join later".into(),
        );
    }
    dead_letters_replayed_once(|| h.connect(&url), 200, 20, 2_000.0).await;
    Outcome::Passed
}

/// Dead letters read back and replayed (`yard dlq`): `total` events fail while their
/// downstream is down and are dead-lettered with nobody listening; the kept letters are
/// listed by cause (a filter that takes none leaves them all in place); `dups` of them are
/// kept twice (a dead-lettering redelivered after a lost acknowledgement); the downstream
/// comes back and every letter is replayed at `per_second` through a consumer with an inbox:
/// each event is handled exactly once, the pace is kept, and nothing is left.
pub async fn dead_letters_replayed_once(
    connect: impl Fn() -> Arc<dyn Transport>,
    total: usize,
    dups: usize,
    per_second: f64,
) {
    use crate::dead_letters::{DeadLetters, Filter};
    use crate::middleware::dead_letter::dead_letter;
    let transport = connect();
    let t = topic("replay");
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(Mutex::new(Vec::<usize>::new()));
    let (d, c, h) = (down.clone(), calls.clone(), handled.clone());
    let service = Service::new("dlq-replay")
        .consumer_policy(ConsumerPolicy {
            max_attempts: 1,
            inbox: Some(Arc::new(crate::inbox::MemoryInbox::new(
                4 * total,
                Duration::from_secs(600),
            ))),
            ..ConsumerPolicy::default()
        })
        .on_event(&t, move |m: Numbered| {
            let (d, c, h) = (d.clone(), c.clone(), h.clone());
            async move {
                c.fetch_add(1, AtomicOrdering::SeqCst);
                if d.load(AtomicOrdering::SeqCst) {
                    return Err(crate::error::HandlerError::internal("downstream down"));
                }
                h.lock().unwrap_or_else(|p| p.into_inner()).push(m.n);
                Ok(())
            }
        });
    let server = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let publisher = connect();
    publish_all(
        &publisher,
        (0..total).map(|n| numbered(&t, n, None)).collect(),
        16,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while calls.load(AtomicOrdering::SeqCst) < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} handled (and failed)",
            calls.load(AtomicOrdering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = DeadLetters::new(connect(), &t);
    let idle = Duration::from_secs(2);
    let none = admin
        .hold(
            &Filter::parse(&["code=bad_request"]).expect("filter"),
            usize::MAX,
            idle,
        )
        .await
        .expect("hold");
    assert!(none.is_empty(), "the filter took {} letters", none.len());
    none.release().await;
    let held = admin
        .hold(&Filter::default(), total + dups + 1, idle)
        .await
        .expect("hold all");
    let failures = held.failures();
    assert_eq!(failures.len(), 1, "one cause: {failures:?}");
    assert_eq!(failures[0].count, total, "{failures:?}");
    assert_eq!(failures[0].error, "downstream down");
    assert!(failures[0].first_failed_at <= failures[0].last_failed_at);
    // Some letters kept twice, as a redelivered dead-lettering would.
    let copies: Vec<Envelope> = held
        .letters()
        .take(dups)
        .map(|dead| {
            let mut original = crate::dead_letters::original(dead);
            original.headers.insert(header::ATTEMPT, "1");
            let cause = crate::error::HandlerError::internal("downstream down");
            dead_letter(original, &cause, 1, ".dlq")
        })
        .collect();
    held.release().await;
    publish_all(&publisher, copies, 16).await;
    // A broker that de-duplicates by id (JetStream) keeps one of each; the others keep both.
    let kept = admin
        .hold(&Filter::default(), total + dups + 1, idle)
        .await
        .expect("hold with the copies");
    let kept_count = kept.len();
    kept.release().await;
    assert!(
        kept_count == total + dups || kept_count == total,
        "{kept_count} letters kept of {total} and {dups} copies"
    );
    down.store(false, AtomicOrdering::SeqCst);
    let started = Instant::now();
    let done = admin
        .replay(
            &Filter::default(),
            publisher.as_ref(),
            per_second,
            usize::MAX,
            idle,
        )
        .await
        .expect("replay");
    let took = started.elapsed();
    assert_eq!(done.replayed, kept_count, "{done:?}");
    let want: Vec<usize> = (0..total).collect();
    wait_for_handled(&handled, &want, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all = handled.lock().unwrap_or_else(|p| p.into_inner()).clone();
    all.sort_unstable();
    assert_eq!(all.len(), total, "each replayed event handled once");
    assert_eq!(all, want);
    let paced = Duration::from_secs_f64((kept_count - 1) as f64 / per_second);
    assert!(
        took >= paced,
        "{kept_count} replayed in {took:?}, faster than {per_second}/s"
    );
    let left = admin
        .hold(&Filter::default(), usize::MAX, Duration::from_millis(500))
        .await
        .expect("hold");
    assert!(
        left.is_empty(),
        "{} letters left after the replay",
        left.len()
    );
    server.shutdown().await;
}

/// `url` with the query option `name=value` added.
fn with_option(url: &str, name: &str, value: impl std::fmt::Display) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{name}={value}")
}

/// A service named `name` whose handler of `topic` records the number of each event.
fn recording(name: &str, topic: &str) -> (Service, Arc<std::sync::Mutex<Vec<usize>>>) {
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = handled.clone();
    let service = Service::new(name).on_event(topic, move |m: Numbered| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(m.n);
            Ok::<(), crate::error::HandlerError>(())
        }
    });
    (service, handled)
}

/// A group subscription to `topic`'s dead letters, made before anything is dead-lettered
/// (on MQTT a dead letter nobody subscribed to is not kept).
async fn watch_dead_letters(h: &Harness, url: &str, topic: &str) -> Subscription {
    h.connect(url)
        .subscribe(&format!("{topic}.dlq"), SubscribeOptions::group("watch"))
        .await
        .expect("subscribe dlq")
}

/// Waits until the numbers handled are exactly `want` (repeats aside); fails at once when one
/// that is not wanted was handled, or when patience runs out.
async fn wait_for_handled(
    handled: &std::sync::Mutex<Vec<usize>>,
    want: &[usize],
    patience: Duration,
) {
    let deadline = Instant::now() + patience;
    loop {
        let mut got = handled.lock().unwrap_or_else(|p| p.into_inner()).clone();
        got.sort_unstable();
        got.dedup();
        if got == want {
            return;
        }
        assert!(
            got.iter().all(|n| want.contains(n)),
            "handled {got:?}: only {want:?} may be"
        );
        assert!(Instant::now() < deadline, "handled {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Hostile events never stop a consumer nor loop in it: an event over the service's size
/// limit is dead-lettered without reaching the handler; a poison message too large for the
/// broker to take back whole as a dead letter is dead-lettered without its payload (its size
/// and hash instead) and settled; each bad message leaves one dead letter, with an id of its
/// own, and the valid events around them are handled.
pub async fn hostile_events_are_dead_lettered(h: &Harness) -> Outcome {
    use crate::middleware::dead_letter::{ERROR_CODE, ORIGINAL_ID, ORIGINAL_SIZE};
    let (url, publisher) = h.open();
    if !publisher.capabilities().redelivery {
        return Outcome::Skipped("capabilities.redelivery is false".into());
    }
    // The serving side publishes dead letters of at most 48 KiB and accepts events of at most
    // 100 KiB; the publisher sends what a raw client of the broker could.
    const DEAD_LETTER_LIMIT: usize = 48 * 1024;
    let server_side = h.connect(&with_option(&url, "max_message_bytes", DEAD_LETTER_LIMIT));
    let t = topic("hostile");
    let (service, handled) = recording("conformance-hostile", &t);
    let service = service.max_body(100 * 1024);
    let mut dead = watch_dead_letters(h, &url, &t).await;
    let server = crate::server::serve(server_side, service)
        .await
        .expect("serve");
    let json = |payload: Vec<u8>| {
        let mut e = Envelope::new(t.as_str(), payload);
        e.headers.insert(header::CONTENT_TYPE, "application/json");
        e
    };
    // Valid JSON (trailing white space is), over the service's limit.
    let mut over_limit = br#"{"n":2,"key":null}"#.to_vec();
    over_limit.resize(200 * 1024, b' ');
    let mut sent = vec![
        numbered(&t, 1, None),
        // Under the limit, does not decode, too large to be dead-lettered whole.
        json(vec![b'z'; 80 * 1024]),
        json(over_limit),
    ];
    for bad in ["not json 1", "not json 2", "not json 3"] {
        sent.push(json(bad.as_bytes().to_vec()));
    }
    let ids: HashSet<String> = sent.iter().skip(1).map(|e| e.id.clone()).collect();
    sent.push(numbered(&t, 7, None));
    for e in sent {
        publisher.publish(e).await.expect("publish");
    }
    let mut letters = Vec::new();
    while letters.len() < 5 {
        let d = tokio::time::timeout(h.patience, dead.next())
            .await
            .unwrap_or_else(|_| panic!("5 dead letters within patience, got {letters:#?}"))
            .expect("stream open")
            .expect("delivery");
        letters.push(d.envelope.clone());
        let _ = d.ack().await;
    }
    // Nothing loops: no sixth dead letter comes.
    if let Ok(Some(Ok(extra))) = tokio::time::timeout(Duration::from_secs(2), dead.next()).await {
        panic!("a message was dead-lettered twice: {:?}", extra.envelope);
    }
    let code = |e: &Envelope| e.headers.get(ERROR_CODE).unwrap_or_default().to_string();
    let sized = |n: usize| {
        letters
            .iter()
            .find(|e| e.headers.get(ORIGINAL_SIZE) == Some(n.to_string().as_str()))
            .unwrap_or_else(|| panic!("no dead letter of a {n}-byte message: {letters:#?}"))
    };
    let poison = sized(80 * 1024);
    assert!(
        poison.payload.is_empty(),
        "kept whole over the broker's limit"
    );
    assert_eq!(code(poison), "bad_request");
    let too_big = sized(200 * 1024);
    assert!(too_big.payload.is_empty());
    assert_eq!(code(too_big), "payload_too_large");
    // Each dead letter has an id of its own and names its original's.
    let originals: HashSet<String> = letters
        .iter()
        .map(|e| e.headers.get(ORIGINAL_ID).unwrap_or_default().to_string())
        .collect();
    assert_eq!(originals, ids, "one dead letter per bad message");
    assert!(letters.iter().all(|e| !ids.contains(&e.id)));
    // 2 is over the limit.
    wait_for_handled(&handled, &[1, 7], h.patience).await;
    server.shutdown().await;
    Outcome::Passed
}

/// An event past its expiry ([`Envelope::with_ttl`]) is dead-lettered, saying how late it
/// was, instead of handled; one still within its time, and one without any, are handled.
pub async fn expired_events_are_dead_lettered(h: &Harness) -> Outcome {
    use crate::middleware::dead_letter::{ERROR_CODE, ORIGINAL_ID};
    let (url, transport) = h.open();
    if !transport.capabilities().redelivery {
        return Outcome::Skipped("capabilities.redelivery is false".into());
    }
    let t = topic("expiry");
    let (service, handled) = recording("conformance-expiry", &t);
    let mut dead = watch_dead_letters(h, &url, &t).await;
    let server = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let publisher = h.connect(&url);
    // Its time is up before any consumer can see it.
    let expired = numbered(&t, 1, None).with_ttl(Duration::ZERO);
    let expired_id = expired.id.clone();
    tokio::time::sleep(Duration::from_millis(5)).await;
    publisher.publish(expired).await.expect("publish");
    let in_time = numbered(&t, 2, None).with_ttl(Duration::from_secs(600));
    publisher.publish(in_time).await.expect("publish");
    publisher
        .publish(numbered(&t, 3, None))
        .await
        .expect("publish");
    let d = tokio::time::timeout(h.patience, dead.next())
        .await
        .expect("the expired event dead-lettered")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(
        d.envelope.headers.get(ORIGINAL_ID),
        Some(expired_id.as_str())
    );
    assert_eq!(
        d.envelope.headers.get(ERROR_CODE),
        Some("deadline_exceeded")
    );
    let why = d.envelope.headers.get(header::ERROR).unwrap_or_default();
    assert!(why.contains("expired") && why.contains("ms"), "{why}");
    let _ = d.ack().await;
    // 1 expired.
    wait_for_handled(&handled, &[2, 3], h.patience).await;
    server.shutdown().await;
    Outcome::Passed
}

/// A group member that settles some messages and leaves: the next member of the group gets
/// exactly the others. Nothing settled comes back (an off-by-one in a stored position shows
/// here as a repeat), nothing unread is skipped.
pub async fn group_resumes_after_settled(h: &Harness) -> Outcome {
    let (url, publisher) = h.open();
    let caps = publisher.capabilities();
    if !caps.durable || !caps.consumer_groups {
        return Outcome::Skipped("needs durable consumer groups".into());
    }
    let t = topic("resume");
    let first = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("g").prefetch(1))
        .await
        .expect("subscribe");
    let total = 20;
    publish_all(
        &publisher,
        (0..total).map(|n| numbered(&t, n, None)).collect(),
        4,
    )
    .await;
    let settled = collect(first, total / 2, h.patience, Duration::ZERO).await;
    let settled: HashSet<usize> = settled.into_iter().map(|m| m.n).collect();
    assert_eq!(settled.len(), total / 2, "the first member read too little");
    let second = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("g"))
        .await
        .expect("subscribe again");
    let rest = collect(second, total - settled.len(), h.patience, Duration::ZERO).await;
    let repeated: Vec<usize> = rest
        .iter()
        .map(|m| m.n)
        .filter(|n| settled.contains(n))
        .collect();
    assert!(
        repeated.is_empty(),
        "settled messages delivered again: {repeated:?}"
    );
    let mut all: Vec<usize> = settled
        .into_iter()
        .chain(rest.iter().map(|m| m.n))
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (0..total).collect::<Vec<_>>(), "messages lost");
    Outcome::Passed
}

/// A consumer that drops a delivery without settling it (dies mid-message): the message goes
/// to another member of the group.
pub async fn dropped_delivery_is_redelivered(h: &Harness) -> Outcome {
    let (url, publisher) = h.open();
    let caps = publisher.capabilities();
    if !caps.redelivery || caps.delivery != DeliveryGuarantee::AtLeastOnce {
        return Outcome::Skipped("needs redelivery and at-least-once delivery".into());
    }
    let t = topic("crash");
    let mut dying = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("g").prefetch(1))
        .await
        .expect("subscribe");
    publisher
        .publish(numbered(&t, 1, None))
        .await
        .expect("publish");
    let d = tokio::time::timeout(h.patience, dying.next())
        .await
        .expect("first delivery")
        .expect("open")
        .expect("ok");
    drop(d);
    drop(dying);
    let survivor = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    let got = collect(survivor, 1, h.patience, Duration::ZERO).await;
    assert_eq!(
        got.first().map(|m| m.n),
        Some(1),
        "message lost with its consumer"
    );
    Outcome::Passed
}

/// Shutdown lets in-flight handlers finish (and settles them) and takes no new work.
pub async fn graceful_shutdown(h: &Harness) -> Outcome {
    let (_url, transport) = h.open();
    let t = topic("shutdown");
    let started = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(Mutex::new(Vec::new()));
    let (s, f) = (started.clone(), finished.clone());
    let service = Service::new("conformance-shutdown").on_event(&t, move |m: Numbered| {
        let (s, f) = (s.clone(), f.clone());
        async move {
            s.notify_one();
            tokio::time::sleep(Duration::from_millis(300)).await;
            f.lock().unwrap_or_else(|p| p.into_inner()).push(m.n);
        }
    });
    let server = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let publisher = h.connect(server.url());
    let p = publisher.clone();
    let topic_name = t.clone();
    // Over HTTP the publish returns only when the handler is done, so it runs beside us.
    let first = tokio::spawn(async move { p.publish(numbered(&topic_name, 1, None)).await });
    tokio::time::timeout(h.patience, started.notified())
        .await
        .expect("handler started");
    server.shutdown().await;
    assert_eq!(
        *finished.lock().unwrap_or_else(|p| p.into_inner()),
        vec![1],
        "in-flight handler did not finish before shutdown returned"
    );
    let _ = first.await;
    let _ = publisher.publish(numbered(&t, 2, None)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *finished.lock().unwrap_or_else(|p| p.into_inner()),
        vec![1],
        "a stopped service took new work"
    );
    Outcome::Passed
}

/// A service stopped gracefully while its consumer holds prefetched messages it has not
/// started: those go back to the group at once, and the next member of the group handles
/// every message the first did not, each once (none lost, none repeated, and none waiting
/// for a broker's redelivery timeout: all within 15 s of the stop). The next member starts
/// after the first stopped; where a group with no member keeps nothing (MQTT), it starts
/// before, as in a rolling restart.
pub async fn graceful_shutdown_hands_back_prefetched(h: &Harness) -> Outcome {
    let (url, transport) = h.open();
    let caps = transport.capabilities();
    if !caps.consumer_groups || !caps.redelivery {
        return Outcome::Skipped("needs consumer groups and redelivery".into());
    }
    let t = topic("prefetched");
    let handled = Arc::new(Mutex::new(Vec::<usize>::new()));
    let member = |handled: Arc<Mutex<Vec<usize>>>| {
        Service::new("conformance-prefetched")
            .consumer_policy(ConsumerPolicy {
                concurrency: 2,
                ..ConsumerPolicy::default()
            })
            .on_event(&t, move |m: Numbered| {
                let handled = handled.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    handled.lock().unwrap_or_else(|p| p.into_inner()).push(m.n);
                }
            })
    };
    let first = crate::server::serve(transport.clone(), member(handled.clone()))
        .await
        .expect("serve");
    let total = 40;
    publish_all(
        &h.connect(&url),
        (0..total).map(|n| numbered(&t, n, None)).collect(),
        4,
    )
    .await;
    let deadline = Instant::now() + h.patience;
    while handled.lock().unwrap_or_else(|p| p.into_inner()).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the first member handled nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let serve_second = || crate::server::serve(h.connect(&url), member(handled.clone()));
    let early = if caps.keeps_for_later_groups {
        None
    } else {
        Some(serve_second().await.expect("serve the second member"))
    };
    first.shutdown().await;
    let by_first = handled.lock().unwrap_or_else(|p| p.into_inner()).len();
    assert!(
        by_first < total,
        "the first member handled everything before it stopped"
    );
    let second = match early {
        Some(second) => second,
        None => serve_second().await.expect("serve the second member"),
    };
    let want: Vec<usize> = (0..total).collect();
    wait_for_handled(&handled, &want, Duration::from_secs(15)).await;
    // A moment for a repeat to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.shutdown().await;
    let mut all = handled.lock().unwrap_or_else(|p| p.into_inner()).clone();
    all.sort_unstable();
    assert_eq!(
        all, want,
        "each message handled once across the two members"
    );
    Outcome::Passed
}

/// A consumer with `ordered_by_key` handles each key's messages one at a time in publish
/// order, keys in parallel, and a failing message keeps its turn.
pub async fn ordered_consumption(h: &Harness) -> Outcome {
    let (url, transport) = h.open();
    if !transport.capabilities().redelivery {
        return Outcome::Skipped(
            "capabilities.redelivery is false (no consumer loop to order)".into(),
        );
    }
    let t = topic("ordered");
    let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failed_once = Arc::new(AtomicUsize::new(0));
    let (s, r, p, f) = (
        seen.clone(),
        running.clone(),
        peak.clone(),
        failed_once.clone(),
    );
    let service = Service::new("conformance-ordered")
        .consumer_policy(ConsumerPolicy {
            ordered_by_key: true,
            concurrency: 8,
            initial_backoff: Duration::from_millis(10),
            ..ConsumerPolicy::default()
        })
        .on_event(&t, move |m: Numbered| {
            let (s, r, p, f) = (s.clone(), r.clone(), p.clone(), f.clone());
            async move {
                let now = r.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                p.fetch_max(now, AtomicOrdering::SeqCst);
                tokio::time::sleep(Duration::from_micros((m.n as u64 * 7919) % 3000)).await;
                r.fetch_sub(1, AtomicOrdering::SeqCst);
                if m.n == 10 && f.fetch_add(1, AtomicOrdering::SeqCst) == 0 {
                    return Err(crate::error::HandlerError::unavailable("fails once"));
                }
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((m.key.unwrap_or_default(), m.n));
                Ok(())
            }
        });
    let server = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let publisher = h.connect(&url);
    let total = 200;
    for i in 0..total {
        publisher
            .publish(numbered(&t, i, Some(format!("k{}", i % 4))))
            .await
            .expect("publish");
    }
    let deadline = Instant::now() + h.patience;
    while seen.lock().unwrap_or_else(|p| p.into_inner()).len() < total && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(seen.len(), total, "messages lost or duplicated");
    let mut last: HashMap<String, usize> = HashMap::new();
    for (key, n) in &seen {
        if let Some(prev) = last.get(key) {
            assert!(n > prev, "key {key}: {n} handled after {prev}");
        }
        last.insert(key.clone(), *n);
    }
    assert!(
        peak.load(AtomicOrdering::SeqCst) > 1,
        "keys were not handled in parallel"
    );
    assert_eq!(
        failed_once.load(AtomicOrdering::SeqCst),
        2,
        "the failing message was not retried"
    );
    Outcome::Passed
}

/// A message over the transport's size limit is refused at publish with a clear error.
pub async fn oversized_publish_is_rejected(h: &Harness) -> Outcome {
    let (_url, publisher) = h.open();
    let big = Envelope::new(topic("big"), vec![b'x'; 16 * 1024 * 1024]);
    match publisher.publish(big).await {
        Err(TransportError::PayloadTooLarge { size, limit }) => {
            assert!(size > limit);
            Outcome::Passed
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
}

/// Every transport reads its URL's options with one grammar: an option it does not know is
/// refused naming the ones it knows, a malformed number is refused naming the option, and
/// `max_message_bytes` bounds what `publish` accepts.
pub async fn url_options_follow_one_grammar(h: &Harness) -> Outcome {
    let url = (h.fresh_url)();
    let refusal = |url: &str| match (h.connect)(url) {
        Err(TransportError::InvalidUrl { reason, .. }) => reason,
        Err(other) => panic!("{url}: expected InvalidUrl, got {other}"),
        Ok(t) => panic!("{url}: accepted as {}", t.url()),
    };
    let unknown = refusal(&with_option(&url, "no_such_option", 1));
    assert!(
        unknown.contains("unknown option \"no_such_option\" (known: ns, max_message_bytes"),
        "{unknown}"
    );
    let malformed = refusal(&with_option(&url, "max_message_bytes", "lots"));
    assert!(
        malformed.contains("max_message_bytes=lots is not a whole number"),
        "{malformed}"
    );
    let small = h.connect(&with_option(&url, "max_message_bytes", 1000));
    match small
        .publish(Envelope::new(topic("small"), vec![b'x'; 2000]))
        .await
    {
        Err(TransportError::PayloadTooLarge { limit, .. }) => assert!(limit <= 1000, "{limit}"),
        other => panic!("expected PayloadTooLarge at 1000 bytes, got {other:?}"),
    }
    Outcome::Passed
}

/// After the server restarts, the client reconnects by itself and every confirmed publish is
/// delivered.
pub async fn reconnect_after_restart(h: &Harness) -> Outcome {
    let Some(restart) = h.restart.clone() else {
        return Outcome::Skipped("harness.restart is None (no server to restart)".into());
    };
    let (url, publisher) = h.open();
    if !publisher.capabilities().durable {
        return Outcome::Skipped("capabilities.durable is false".into());
    }
    let t = topic("restart");
    let sub = h
        .connect(&url)
        .subscribe(&t, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    let reader = tokio::spawn(collect(sub, 20, h.patience, Duration::ZERO));
    let mut confirmed = BTreeMap::new();
    for i in 0..10 {
        if publisher.publish(numbered(&t, i, None)).await.is_ok() {
            confirmed.insert(i, ());
        }
    }
    restart().await;
    for i in 10..20 {
        let deadline = Instant::now() + h.patience;
        while Instant::now() < deadline {
            if publisher.publish(numbered(&t, i, None)).await.is_ok() {
                confirmed.insert(i, ());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let got: HashSet<usize> = reader
        .await
        .expect("reader")
        .into_iter()
        .map(|m| m.n)
        .collect();
    for i in confirmed.keys() {
        assert!(
            got.contains(i),
            "confirmed message {i} was lost across the restart"
        );
    }
    Outcome::Passed
}

/// Counts what passes through it: the service [`CountLayer`] makes.
#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    seen: Arc<AtomicUsize>,
}

impl<S: tower::Service<R>, R> tower::Service<R> for Count<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.seen.fetch_add(1, AtomicOrdering::SeqCst);
        self.inner.call(request)
    }
}

/// A user layer that counts the calls or events passing through it and passes each on
/// unchanged: what a layer that only looks costs, and proof that a path went through it.
#[derive(Clone, Default)]
pub struct CountLayer(Arc<AtomicUsize>);

impl<S> tower::Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            seen: self.0.clone(),
        }
    }
}

impl CountLayer {
    /// How many calls or events passed through it.
    pub fn seen(&self) -> usize {
        self.0.load(AtomicOrdering::SeqCst)
    }
}

/// Two services with different names on one URL (one broker namespace) each answer only the
/// calls that name them, and two instances of one service share its calls.
pub async fn two_services_share_a_namespace(h: &Harness) -> Outcome {
    let (url, transport) = h.open();
    if !transport.capabilities().request_reply {
        return Outcome::Skipped("capabilities.request_reply is false".into());
    }
    let who = |name: &'static str, instance: usize| {
        Service::new(name).route(
            "/who",
            rpc(move || async move { format!("{name}#{instance}") }),
        )
    };
    let shared = transport.capabilities().services_share_url;
    let a1 = crate::server::serve(transport.clone(), who("conformance-a", 1))
        .await
        .expect("serve a");
    // Where a URL is one service (HTTP), the other service has a URL of its own: what is
    // checked then is that naming a service does not get in the way.
    let b_url = if shared { url.clone() } else { h.open().0 };
    let b = crate::server::serve(h.connect(&b_url), who("conformance-b", 1))
        .await
        .expect("serve b");
    let a2 = if shared {
        Some(
            crate::server::serve(h.connect(&url), who("conformance-a", 2))
                .await
                .expect("serve a again"),
        )
    } else {
        None
    };
    let call = |url: &str, service: &str| {
        Client::new(h.connect(url))
            .service(service.to_string())
            .with_timeout(Duration::from_secs(10))
    };
    let (to_a, to_b) = (
        call(a1.url(), "conformance-a"),
        call(b.url(), "conformance-b"),
    );
    let mut instances_of_a = HashSet::new();
    for i in 0..20 {
        let from_a: String = to_a.call("/who", ()).await.expect("call a");
        assert!(
            from_a.starts_with("conformance-a#"),
            "call {i} to a answered by {from_a}"
        );
        instances_of_a.insert(from_a);
        let from_b: String = to_b.call("/who", ()).await.expect("call b");
        assert_eq!(from_b, "conformance-b#1", "call {i} to b");
    }
    if a2.is_some() {
        assert_eq!(
            instances_of_a.len(),
            2,
            "20 calls to a service with two instances all went to {instances_of_a:?}"
        );
    }
    if let Some(a2) = a2 {
        a2.shutdown().await;
    }
    a1.shutdown().await;
    b.shutdown().await;
    Outcome::Passed
}

/// A published envelope arrives with its id and every header it was published with.
pub async fn envelope_id_and_headers_survive(h: &Harness) -> Outcome {
    let (url, publisher) = h.open();
    let subscriber = h.connect(&url);
    let t = topic("metadata");
    let mut sub = subscriber
        .subscribe(&t, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    let sent = Envelope::new(t.as_str(), r#"{"n":1}"#)
        .with_header("x-custom", "custom value / with spaces")
        .with_header(header::ORDERING_KEY, "key-1")
        .with_header(
            header::TRACEPARENT,
            crate::context::trace::child_traceparent(None),
        );
    // Read while publishing: over HTTP a publish returns once the subscriber acknowledged.
    let patience = h.patience;
    let reader = tokio::spawn(async move {
        let d = tokio::time::timeout(patience, sub.next())
            .await
            .expect("delivered in time")
            .expect("subscription open")
            .expect("delivery");
        let envelope = d.envelope.clone();
        d.ack().await.expect("ack");
        envelope
    });
    publisher.publish(sent.clone()).await.expect("publish");
    let got = reader.await.expect("reader");
    assert_eq!(got.id, sent.id, "the envelope id changed on the way");
    assert_eq!(got.subject, t);
    assert_eq!(&got.payload[..], &sent.payload[..]);
    for (name, value) in sent.headers.iter() {
        assert_eq!(
            got.headers.get(name),
            Some(value),
            "header {name} did not survive: {:?}",
            got.headers
        );
    }
    Outcome::Passed
}

/// A user layer on the service sees every call it answers and every event it handles, and a
/// user layer on the client sees every call it makes and every event it publishes, on every
/// transport.
pub async fn layers_see_every_call_and_event(h: &Harness) -> Outcome {
    let (url, transport) = h.open();
    let rpc_too = transport.capabilities().request_reply;
    let t = topic("layers");
    let (served_calls, served_events) = (CountLayer::default(), CountLayer::default());
    let (made_calls, published) = (CountLayer::default(), CountLayer::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let mut service = Service::new("conformance-layers")
        .layer(served_calls.clone())
        .event_layer(served_events.clone())
        .on_event(&t, move |_n: Numbered| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, AtomicOrdering::SeqCst);
            }
        });
    if rpc_too {
        service = service.route("/echo", rpc(echo));
    }
    let server = crate::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let client_url = if rpc_too {
        server.url().to_string()
    } else {
        url
    };
    let client = Client::new(h.connect(&client_url))
        .service("conformance-layers")
        .with_timeout(Duration::from_secs(10))
        .layer(made_calls.clone())
        .publish_layer(published.clone());
    const N: usize = 5;
    if rpc_too {
        for i in 0..N {
            let back: String = client.call("/echo", format!("{i}")).await.expect("call");
            assert_eq!(back, i.to_string());
        }
    }
    for i in 0..N {
        client
            .publish(&t, &Numbered { n: i, key: None })
            .await
            .expect("publish");
    }
    let deadline = Instant::now() + h.patience;
    while handled.load(AtomicOrdering::SeqCst) < N {
        assert!(Instant::now() < deadline, "events not handled in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    let calls = if rpc_too { N } else { 0 };
    assert_eq!(made_calls.seen(), calls, "client layer: calls made");
    assert_eq!(served_calls.seen(), calls, "service layer: calls answered");
    assert_eq!(published.seen(), N, "client layer: events published");
    assert!(
        served_events.seen() >= N,
        "service layer saw {} of {N} events",
        served_events.seen()
    );
    Outcome::Passed
}

/// The number of the next message of `log`, checking it says where it stands.
async fn next_in_log(log: &mut crate::event_log::EventLog, patience: Duration) -> usize {
    let env = tokio::time::timeout(patience, log.next())
        .await
        .expect("a message within patience")
        .expect("the log goes on")
        .expect("read");
    let n = number_of(&env).expect("numbered").n;
    assert!(
        env.headers.get(header::LOG_POSITION).is_some(),
        "message {n} says where it stands"
    );
    n
}

/// A topic read as a log ([`EventLog`](crate::event_log::EventLog)): everything from the
/// beginning in order, each message with its place; caught up once what was there at opening
/// is read; what is published next follows; opened again after a cursor, only what came after
/// it. A transport without a log refuses clearly.
pub async fn log_replayed_from_the_beginning(h: &Harness) -> Outcome {
    use crate::event_log::EventLog;
    let (_url, transport) = h.open();
    let t = topic("log");
    if !transport.capabilities().replay {
        return match EventLog::open(transport.as_ref(), &t, None).await {
            Err(TransportError::Unsupported { .. }) => Outcome::Skipped(
                "replay: the transport keeps no log (and refuses to open one, as checked)".into(),
            ),
            Err(e) => panic!("opening a log where there is none: {e}, not Unsupported"),
            Ok(_) => panic!("a transport without replay opened a log"),
        };
    }
    // One ordering key: one partition on Kafka, so one order to check.
    publish_all(
        &transport,
        (0..5)
            .map(|n| numbered(&t, n, Some("one".into())))
            .collect(),
        1,
    )
    .await;
    let mut log = EventLog::open(transport.as_ref(), &t, None)
        .await
        .expect("open the log");
    assert!(!log.caught_up(), "nothing read yet of 5");
    let mut third = None;
    for want in 0..5 {
        assert_eq!(
            next_in_log(&mut log, h.patience).await,
            want,
            "in the log's order"
        );
        if want == 2 {
            third = Some(log.cursor().clone());
        }
        assert_eq!(log.caught_up(), want == 4, "caught up after the fifth only");
    }
    publish_all(&transport, vec![numbered(&t, 5, Some("one".into()))], 1).await;
    assert_eq!(
        next_in_log(&mut log, h.patience).await,
        5,
        "what is published next follows"
    );
    drop(log);
    let mut again = EventLog::open(transport.as_ref(), &t, third)
        .await
        .expect("open after a cursor");
    for want in 3..6 {
        assert_eq!(
            next_in_log(&mut again, h.patience).await,
            want,
            "only what came after the cursor"
        );
    }
    assert!(again.caught_up());
    Outcome::Passed
}

/// A log whose messages were published many at once (sent in batches, spread over partitions)
/// is caught up only once the last of them is read: the end a log is opened with is where
/// its last message stands, not where the broker's offsets say its last batch starts.
pub async fn log_caught_up_after_its_last_message(h: &Harness) -> Outcome {
    use crate::event_log::EventLog;
    let (_url, transport) = h.open();
    if !transport.capabilities().replay {
        return Outcome::Skipped("replay: the transport keeps no log".into());
    }
    let t = topic("logend");
    const MANY: usize = 300;
    publish_all(
        &transport,
        (0..MANY).map(|n| numbered(&t, n, None)).collect(),
        64,
    )
    .await;
    let mut log = EventLog::open(transport.as_ref(), &t, None)
        .await
        .expect("open the log");
    let mut seen = std::collections::BTreeSet::new();
    while !log.caught_up() {
        assert!(
            seen.insert(next_in_log(&mut log, h.patience).await),
            "each message once"
        );
    }
    assert_eq!(
        seen.len(),
        MANY,
        "caught up after {} of the {MANY} messages the log held",
        seen.len()
    );
    Outcome::Passed
}

/// A [`View`](crate::event_log::View) folds the log into its state, dead-letters (to
/// `<topic>.dlq`, kept for the dead-letter group) what its fold refuses, writes a snapshot when
/// it stops and, started again from it, folds only what came after.
pub async fn view_folds_and_starts_from_its_snapshot(h: &Harness) -> Outcome {
    use crate::event_log::View;
    use crate::middleware::dead_letter::{DEAD_LETTER_GROUP, ORIGINAL_TOPIC};
    let (url, transport) = h.open();
    if !transport.capabilities().replay {
        return Outcome::Skipped("replay: the transport keeps no log".into());
    }
    let t = topic("view");
    let mut events: Vec<Envelope> = (1..=4).map(|n| numbered(&t, n, None)).collect();
    events.insert(2, Envelope::new(&t, b"not a number".to_vec()));
    publish_all(&transport, events, 1).await;
    let folds = Arc::new(AtomicUsize::new(0));
    let dir = std::env::temp_dir().join(format!("sy-view-{}", &crate::message::new_id()[..8]));
    std::fs::create_dir_all(&dir).expect("snapshot dir");
    let snapshot = dir.join("sum.json");
    let view = |folds: Arc<AtomicUsize>| {
        View::new("conformance-view", 0usize, move |sum: &mut usize, env| {
            folds.fetch_add(1, AtomicOrdering::SeqCst);
            let n = number_of(env)
                .ok_or_else(|| crate::error::HandlerError::bad_request("not a numbered event"))?;
            *sum += n.n;
            Ok(())
        })
        .snapshot(&snapshot, Duration::from_secs(3600))
    };
    let running = view(folds.clone())
        .start(transport.clone(), &t)
        .await
        .expect("start the view");
    let reader = running.reader();
    tokio::time::timeout(h.patience, reader.ready())
        .await
        .expect("the view catches up");
    assert_eq!(
        reader.read(|s| *s),
        1 + 2 + 3 + 4,
        "the sum of the numbered events"
    );
    let dead = h.connect(&url);
    let sub = dead
        .subscribe(
            &format!("{t}.dlq"),
            SubscribeOptions::group(DEAD_LETTER_GROUP),
        )
        .await
        .expect("subscribe to the dead letters");
    let mut sub = sub;
    let letter = tokio::time::timeout(h.patience, sub.next())
        .await
        .expect("a dead letter within patience")
        .expect("stream goes on")
        .expect("read");
    assert_eq!(&letter.envelope.payload[..], b"not a number");
    assert_eq!(
        letter.envelope.headers.get(ORIGINAL_TOPIC),
        Some(t.as_str())
    );
    assert!(letter
        .envelope
        .headers
        .get(header::ERROR)
        .is_some_and(|e| e.contains("not a numbered event")));
    let _ = letter.ack().await;
    running.stop().await;
    assert!(snapshot.exists(), "a snapshot written at stop");
    publish_all(&transport, vec![numbered(&t, 10, None)], 1).await;
    let folds_again = Arc::new(AtomicUsize::new(0));
    let running = view(folds_again.clone())
        .start(transport.clone(), &t)
        .await
        .expect("start again");
    let reader = running.reader();
    tokio::time::timeout(h.patience, reader.ready())
        .await
        .expect("caught up again");
    let deadline = Instant::now() + h.patience;
    while reader.read(|s| *s) != 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        reader.read(|s| *s),
        20,
        "the snapshot's sum and the new event"
    );
    assert_eq!(
        folds_again.load(AtomicOrdering::SeqCst),
        1,
        "started from the snapshot: only the new event folded"
    );
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Outcome::Passed
}

/// Generates one `#[tokio::test]` per conformance case for the harness expression given.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@cases $harness;
            round_trip, per_key_order, competing_consumers, broadcast, rpc_with_timeout,
            rpc_to_absent_service_fails_fast, retry_then_dead_letter,
            dead_letter_kept_with_nobody_listening, retries_stay_in_their_group,
            graceful_shutdown_hands_back_prefetched, dead_letters_listed_and_replayed,
            hostile_events_are_dead_lettered, expired_events_are_dead_lettered,
            group_resumes_after_settled, dropped_delivery_is_redelivered, graceful_shutdown,
            oversized_publish_is_rejected, url_options_follow_one_grammar,
            reconnect_after_restart, ordered_consumption, two_services_share_a_namespace,
            envelope_id_and_headers_survive, layers_see_every_call_and_event,
            log_replayed_from_the_beginning, log_caught_up_after_its_last_message,
            view_folds_and_starts_from_its_snapshot);
    };
    (@cases $harness:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = $harness;
                if h.available(stringify!($case)) {
                    $crate::testkit::check(stringify!($case), $crate::testkit::$case(&h).await);
                }
            }
        )*
    };
}

/// The cases every [`Registry`](crate::registry::Registry) backend passes against its real
/// store, `connect` making a fresh handle on the same store each time (as another process
/// would): records seen by another handle, by service and in all; removal; a watch that sees a
/// service appear after it began and go away; a lease that runs out; a [`Registration`] that
/// outlives several leases by renewing and is removed at once when stopped. Panics with what
/// failed. Then configuration: compare-and-set, a value seen from another handle, a watch that
/// gives the value and its change.
///
/// [`Registration`]: crate::registry::Registration
pub async fn registry_conformance(connect: impl Fn() -> Arc<dyn crate::registry::Registry>) {
    use crate::registry::{Change, Instance, Registration};
    let id = &crate::message::new_id()[..8];
    let (a, b) = (connect(), connect());
    let long = Duration::from_secs(30);

    // Records, seen from another handle; removal.
    let books = format!("books{id}");
    let one =
        Instance::new(&books, "one", ["http://127.0.0.1:1".to_string()]).with_version("1.2.0");
    let two = Instance::new(&books, "two", ["nats://127.0.0.1:4222".to_string()])
        .with_metadata("zone", "a");
    a.register(&one, long).await.expect("register one");
    a.register(&two, long).await.expect("register two");
    let listed = b.list(Some(&books)).await.expect("list");
    assert_eq!(
        listed,
        vec![one.clone(), two.clone()],
        "{}: both, from another handle",
        a.url()
    );
    let all = b.list(None).await.expect("list all");
    assert!(
        all.contains(&one) && all.contains(&two),
        "{}: listed among all",
        a.url()
    );
    b.deregister(&books, "one").await.expect("deregister");
    assert_eq!(a.list(Some(&books)).await.expect("list"), vec![two.clone()]);
    a.deregister(&books, "two").await.expect("deregister");
    assert!(a.list(Some(&books)).await.expect("list").is_empty());

    // A watch sees what appears after it began, and what goes.
    let later = format!("later{id}");
    let mut changes = b.watch(None).await.expect("watch");
    let appears = Instance::new(&later, "x", ["mem://x".to_string()]);
    a.register(&appears, long).await.expect("register");
    assert_eq!(
        next_change(&mut changes, &later).await,
        Change::Up(appears.clone())
    );
    a.deregister(&later, "x").await.expect("deregister");
    assert_eq!(
        next_change(&mut changes, &later).await,
        Change::Down {
            service: later.clone(),
            id: "x".into()
        }
    );

    // A lease that runs out: the record goes, and the watch says so.
    let brief = Instance::new(&later, "brief", ["mem://b".to_string()]);
    a.register(&brief, Duration::from_millis(300))
        .await
        .expect("register");
    assert_eq!(
        next_change(&mut changes, &later).await,
        Change::Up(brief.clone())
    );
    assert_eq!(
        next_change(&mut changes, &later).await,
        Change::Down {
            service: later.clone(),
            id: "brief".into()
        },
        "{}: a lease that ran out",
        a.url()
    );
    assert!(b.list(Some(&later)).await.expect("list").is_empty());

    // A registration renews past its lease, and is gone at once when stopped.
    let kept = Instance::new(&later, "kept", ["mem://k".to_string()]);
    let registration = Registration::start(a.clone(), kept.clone(), Duration::from_millis(300))
        .await
        .expect("registration");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        b.list(Some(&later)).await.expect("list"),
        vec![kept.clone()],
        "{}: renewed past three leases",
        a.url()
    );
    registration.stop().await.expect("stop");
    assert!(
        b.list(Some(&later)).await.expect("list").is_empty(),
        "{}: removed when stopped",
        a.url()
    );

    // Configuration: compare-and-set, seen from another handle, watched.
    let key = format!("route/books{id}");
    assert_eq!(a.config_get(&key).await.expect("get"), None);
    assert_eq!(a.config_set(&key, "one", None).await.expect("set"), 1);
    let conflict = b.config_set(&key, "lost", None).await;
    assert!(
        matches!(
            conflict,
            Err(crate::registry::RegistryError::Conflict { found: Some(1), .. })
        ),
        "{}: a set against a stale revision is refused: {conflict:?}",
        a.url()
    );
    let mut watched = b.config_watch(&key).await.expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(5), watched.next())
        .await
        .expect("the value now")
        .expect("open")
        .expect("value");
    assert_eq!(
        first.map(|c| (c.value, c.revision)),
        Some(("one".to_string(), 1))
    );
    assert_eq!(b.config_set(&key, "two", Some(1)).await.expect("set"), 2);
    let changed = tokio::time::timeout(Duration::from_secs(5), watched.next())
        .await
        .expect("the change within 5 s")
        .expect("open")
        .expect("value");
    assert_eq!(
        changed.map(|c| (c.value, c.revision)),
        Some(("two".to_string(), 2))
    );
    assert_eq!(
        a.config_get(&key).await.expect("get").map(|c| c.value),
        Some("two".to_string())
    );
}

/// The next change of `service` a watch sees, within 5 s.
async fn next_change(
    changes: &mut crate::registry::Changes,
    service: &str,
) -> crate::registry::Change {
    use crate::registry::Change;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, changes.next()).await {
            Ok(Some(Ok(change))) => {
                let ours = match &change {
                    Change::Up(i) => i.service == service,
                    Change::Down { service: s, .. } => s == service,
                };
                if ours {
                    return change;
                }
            }
            Ok(Some(Err(e))) => panic!("watch failed: {e}"),
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("no change of {service} within 5 s"),
        }
    }
}

/// What [`registry_at_scale`] measured.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScaleFigures {
    /// Instances registered.
    pub instances: usize,
    /// Watchers, each on a handle of its own.
    pub watchers: usize,
    /// From a registration's start to each watcher hearing of it, p99.
    pub up_p99: Duration,
    /// From a removal's start to each watcher hearing of it, p99.
    pub down_p99: Duration,
    /// Changes the watchers heard while nothing changed, for one lease, in all: renewals
    /// must cost the watchers nothing.
    pub quiet_changes: usize,
}

/// A fleet on one registry: `instances` instances of one service registered (a hundred a
/// second) by one process, each kept by its [`Registration`](crate::registry::Registration)
/// with a 3 s lease, watched by `watchers` watchers. Asserts that each change reaches every
/// watcher within 1 s p99; that while the test's runtime is held by busy handlers for longer
/// than a lease, no live instance is dropped (renewals run on their own thread); that nothing
/// is heard while nothing changes; and that removals reach every watcher within 1 s p99.
pub async fn registry_at_scale(
    connect: impl Fn() -> Arc<dyn crate::registry::Registry>,
    instances: usize,
    watchers: usize,
) -> ScaleFigures {
    use crate::registry::{Change, Instance, Registration};
    const LEASE: Duration = Duration::from_secs(3);
    let service = format!("fleet{}", &crate::message::new_id()[..8]);
    // (watcher, instance id, up?, when heard)
    type Heard = Arc<Mutex<Vec<(usize, String, bool, Instant)>>>;
    let heard: Heard = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut watching = Vec::new();
    for w in 0..watchers {
        let handle = connect();
        let mut changes = handle.watch(Some(&service)).await.expect("watch");
        let (heard, failures) = (heard.clone(), failures.clone());
        watching.push(tokio::spawn(async move {
            let _handle = handle;
            while let Some(change) = changes.next().await {
                let now = Instant::now();
                let mut heard = heard.lock().unwrap_or_else(|p| p.into_inner());
                match change {
                    Ok(Change::Up(i)) => heard.push((w, i.id, true, now)),
                    Ok(Change::Down { id, .. }) => heard.push((w, id, false, now)),
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(e.to_string());
                        return;
                    }
                }
            }
        }));
    }
    let count = |up: bool| {
        heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|h| h.2 == up)
            .count()
    };
    let wait_for = |up: bool, n: usize, what: &str| {
        let what = what.to_string();
        let count = &count;
        let failures = failures.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while count(up) < n {
                let failed = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
                assert!(failed.is_empty(), "a watch failed: {failed:?}");
                assert!(
                    Instant::now() < deadline,
                    "{what}: {} of {n} heard within 60 s",
                    count(up)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let p99 = |started: &HashMap<String, Instant>, up: bool| {
        let mut took: Vec<Duration> = heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|h| h.2 == up)
            .filter_map(|(_, id, _, at)| started.get(id).map(|s| at.saturating_duration_since(*s)))
            .collect();
        took.sort();
        took.get((took.len() * 99 / 100).min(took.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };

    // Registered a hundred a second, each timed from its start.
    let registrar = connect();
    let mut started = HashMap::new();
    let mut starting = Vec::new();
    let pace = Duration::from_millis(10);
    let begun = Instant::now();
    for n in 0..instances {
        let id = format!("i{n:05}");
        tokio::time::sleep_until((begun + pace * u32::try_from(n).unwrap_or(u32::MAX)).into())
            .await;
        started.insert(id.clone(), Instant::now());
        let instance = Instance::new(&service, id, [format!("http://127.0.0.1:{}", 10_000 + n)]);
        let registrar = registrar.clone();
        starting.push(tokio::spawn(async move {
            Registration::start(registrar, instance, LEASE).await
        }));
    }
    let mut registrations = Vec::new();
    for s in starting {
        registrations.push(s.await.expect("task").expect("registration"));
    }
    wait_for(true, instances * watchers, "registrations").await;
    let up_p99 = p99(&started, true);

    // Busy handlers hold every worker of this runtime for more than a lease.
    let held = LEASE + Duration::from_secs(2);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let busy: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(async move { std::thread::sleep(held) }))
        .collect();
    for b in busy {
        b.await.expect("busy");
    }
    // Then as long again, nothing changing: what the watchers hear is what renewals cost them.
    let before = heard.lock().unwrap_or_else(|p| p.into_inner()).len();
    tokio::time::sleep(LEASE).await;
    let quiet_changes = heard.lock().unwrap_or_else(|p| p.into_inner()).len() - before;
    let dropped = count(false);
    assert_eq!(
        dropped, 0,
        "live instances reported gone while handlers were busy"
    );
    assert_eq!(
        registrar.list(Some(&service)).await.expect("list").len(),
        instances,
        "every instance still listed"
    );

    // A tenth removed, paced the same way.
    let mut stopped = HashMap::new();
    let leaving = instances / 10;
    let begun = Instant::now();
    let mut stopping = Vec::new();
    for (n, r) in registrations.drain(..leaving).enumerate() {
        tokio::time::sleep_until((begun + pace * u32::try_from(n).unwrap_or(u32::MAX)).into())
            .await;
        stopped.insert(r.instance().id.clone(), Instant::now());
        stopping.push(tokio::spawn(r.stop()));
    }
    for s in stopping {
        s.await.expect("task").expect("stop");
    }
    wait_for(false, leaving * watchers, "removals").await;
    let down_p99 = p99(&stopped, false);
    for r in registrations {
        r.stop().await.expect("stop");
    }
    for w in watching {
        w.abort();
    }
    let figures = ScaleFigures {
        instances,
        watchers,
        up_p99,
        down_p99,
        quiet_changes,
    };
    eprintln!("{}: {figures:?}", registrar.url());
    assert!(
        up_p99 <= Duration::from_secs(1),
        "registrations reached the watchers in {up_p99:?} (p99)"
    );
    assert!(
        down_p99 <= Duration::from_secs(1),
        "removals reached the watchers in {down_p99:?} (p99)"
    );
    assert_eq!(quiet_changes, 0, "renewals are not changes");
    figures
}
