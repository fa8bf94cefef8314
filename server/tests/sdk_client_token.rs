//! The SDK client follows a server started with `--client-tokens` when given a token
//! (`ClientBuilder::token`), over the `WatchConfig` stream and over `GET /v1/config` polling;
//! without one it is refused and stays on what it had.

mod http_support;
mod net_support;

use std::time::Duration;

use allot::Client;
use http_support::CONFIG;
use net_support::{metric, start, until};

const TOKEN: &str = "sdk-token-1";

#[tokio::test]
async fn client_sends_its_token_on_the_stream_and_when_polling() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let server = start(
        dir.path(),
        CONFIG,
        &["--client-tokens", tokens.to_str().unwrap()],
    )
    .await;
    let mgmt = net_support::Client::plain(server.mgmt_addr);
    let grpc = format!("http://{}", server.grpc_addr);
    let http = format!("http://{}", server.http_addr);
    let unauthenticated = |transport: &'static str| {
        let mgmt = mgmt.clone();
        async move {
            metric(
                &mgmt,
                &format!(
                    r#"allot_requests_rejected_total{{transport="{transport}",reason="unauthenticated"}}"#
                ),
            )
            .await
        }
    };

    // Without a token: the stream and the poll are both refused; the client stays not ready.
    let anonymous = Client::builder(&grpc)
        .http(&http)
        .poll_interval(Duration::from_millis(50))
        .connect()
        .unwrap();
    until("the anonymous stream is refused", || async {
        unauthenticated("grpc").await >= 1.0
    })
    .await;
    until("the anonymous poll is refused", || async {
        unauthenticated("http").await >= 1.0
    })
    .await;
    assert!(!anonymous.is_ready());

    // With the token: the stream delivers the config.
    let streaming = Client::builder(&grpc).token(TOKEN).connect().unwrap();
    until("the stream delivers", || async {
        streaming.revision() == Some(1)
    })
    .await;
    assert!(!format!("{:?}", Client::builder(&grpc).token(TOKEN)).contains(TOKEN));

    // With the token and no gRPC (a port nothing listens on): polling delivers it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let polling = Client::builder(&nowhere)
        .http(&http)
        .poll_interval(Duration::from_millis(50))
        .token(TOKEN)
        .connect()
        .unwrap();
    until("polling delivers", || async {
        polling.revision() == Some(1)
    })
    .await;
    assert!(!anonymous.is_ready());
    drop((anonymous, streaming, polling));
    server.shutdown().await.unwrap();
}
