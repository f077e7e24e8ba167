//! morag-hub: the daemon on the main server. Its job queue and HTTP API are the next issue; for
//! now it only reports what it is built on.

fn main() {
    println!(
        "morag-hub {} (transport protocol {}); the job queue and HTTP API are not built yet",
        env!("CARGO_PKG_VERSION"),
        morag_transport::ALPN_STR
    );
}
