//! MQTT over WebSocket, with a WebSocket client (tokio-tungstenite) carrying hand-written MQTT bytes.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::clients::v4::{Client, QoS, options};
use crate::support::{TestGateway, WAIT, connect_v311, packet};

async fn ws_connect(
    gw: &TestGateway,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, WsError> {
    let mut request = format!("ws://{}{path}", gw.ws).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(gw.ws).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await?;
    assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "mqtt");
    Ok(ws)
}

async fn next_binary(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Vec<u8> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) => return b.to_vec(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn websocket_client_talks_to_tcp_clients() {
    let gw = TestGateway::start().await;
    let mut ws = ws_connect(&gw, "/mqtt").await.unwrap();
    // CONNECT split across two WebSocket messages: MQTT packets need not align with frames.
    let connect = connect_v311("ws-client", true, 60);
    let (a, b) = connect.split_at(5);
    ws.send(Message::Binary(a.to_vec().into())).await.unwrap();
    ws.send(Message::Binary(b.to_vec().into())).await.unwrap();
    assert_eq!(next_binary(&mut ws).await, [0x20, 2, 0, 0]);
    ws.send(Message::Binary(packet(0x82, &[0, 1, 0, 3, b'w', b'/', b'1', 1]).into())).await.unwrap();
    assert_eq!(next_binary(&mut ws).await, [0x90, 3, 0, 1, 1]);

    let (mut tcp, _) = Client::connect(options("tcp-client", gw.port())).await;
    tcp.subscribe("w/2", QoS::AtMostOnce).await;
    tcp.client.publish("w/1", QoS::AtMostOnce, false, "to ws").await.unwrap();
    assert_eq!(
        next_binary(&mut ws).await,
        packet(0x30, &[0, 3, b'w', b'/', b'1', b't', b'o', b' ', b'w', b's'])
    );
    ws.send(Message::Binary(packet(0x30, &[0, 3, b'w', b'/', b'2', b'h', b'i']).into())).await.unwrap();
    assert_eq!(tcp.publish_msg().await.payload, "hi".as_bytes());
    gw.stop().await;
}

#[tokio::test]
async fn websocket_on_the_wrong_path_is_refused() {
    let gw = TestGateway::start().await;
    match ws_connect(&gw, "/other").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected a 404, got {:?}", other.map(|_| "a connection")),
    }
    gw.stop().await;
}
