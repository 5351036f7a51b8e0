//! Helpers shared by the `yard` process tests.

use std::process::Child;

/// The `yard` binary under test.
#[allow(dead_code)] // not every test file that includes this module runs yard
pub(crate) const YARD: &str = env!("CARGO_BIN_EXE_yard");

/// A child process killed (SIGKILL) and reaped when dropped.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
// Not every test file that includes this module uses it.
#[allow(dead_code)]
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
