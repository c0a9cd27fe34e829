//! `ClientIp` over real TCP: the peer address axum records, and forwarding headers believed
//! only from a trusted peer.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use floodgate::key::{ClientIp, KeyExtractor, RequestHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves a router answering each request with its `ClientIp` key on a free loopback port.
async fn serve(client_ip: ClientIp) -> SocketAddr {
    let app = Router::new().route(
        "/",
        get(move |request: Request| async move {
            match client_ip.extract(&RequestHead::new(&request)) {
                Ok(address) => address.to_string(),
                Err(error) => format!("error: {error}"),
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("the test server runs");
    });
    address
}

/// Sends one HTTP/1.1 GET with `headers` and returns the response body.
async fn get_body(address: SocketAddr, headers: &str) -> String {
    let mut stream = TcpStream::connect(address)
        .await
        .expect("the server accepts");
    let request = format!("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("the response arrives");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a response has a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[tokio::test]
async fn untrusted_peer_is_keyed_by_its_socket_address_whatever_it_claims() {
    let address = serve(
        ClientIp::new()
            .trust_proxies(["10.0.0.0/8"])
            .expect("valid"),
    )
    .await;
    assert_eq!(get_body(address, "").await, "127.0.0.1");
    let spoofed = "X-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\n";
    assert_eq!(get_body(address, spoofed).await, "127.0.0.1");
}

#[tokio::test]
async fn trusted_loopback_proxy_is_believed_from_the_right() {
    let address = serve(
        ClientIp::new()
            .trust_proxies(["127.0.0.0/8"])
            .expect("valid"),
    )
    .await;
    let chain = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.5\r\n";
    assert_eq!(get_body(address, chain).await, "203.0.113.9");
}
