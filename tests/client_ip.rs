//! `ClientIp` over real TCP: the peer address axum records, and forwarding headers believed
//! only from a trusted peer.

mod support;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use floodgate::key::{ClientIp, KeyExtractor, RequestHead};

/// A router answering each request with its `ClientIp` key.
fn echo_key(client_ip: ClientIp) -> Router {
    Router::new().route(
        "/",
        get(move |request: Request| async move {
            match client_ip.extract(&RequestHead::new(&request)) {
                Ok(address) => address.to_string(),
                Err(error) => format!("error: {error}"),
            }
        }),
    )
}

#[tokio::test]
async fn untrusted_peer_is_keyed_by_its_socket_address_whatever_it_claims() {
    let client_ip = ClientIp::new()
        .trust_proxies(["10.0.0.0/8"])
        .expect("valid");
    let address = support::serve(echo_key(client_ip)).await;
    assert_eq!(
        support::send(address, "GET", "/", &[]).await.body,
        "127.0.0.1"
    );
    let spoofed = [
        ("X-Forwarded-For", "203.0.113.9"),
        ("Forwarded", "for=203.0.113.9"),
    ];
    assert_eq!(
        support::send(address, "GET", "/", &spoofed).await.body,
        "127.0.0.1"
    );
}

#[tokio::test]
async fn trusted_loopback_proxy_is_believed_from_the_right() {
    let client_ip = ClientIp::new()
        .trust_proxies(["127.0.0.0/8"])
        .expect("valid");
    let address = support::serve(echo_key(client_ip)).await;
    let chain = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", "203.0.113.9, 127.0.0.5"),
    ];
    assert_eq!(
        support::send(address, "GET", "/", &chain).await.body,
        "203.0.113.9"
    );
}
