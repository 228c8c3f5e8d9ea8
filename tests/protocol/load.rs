//! Many clients at once: nothing lost, order kept per conversation.

use crate::support;

use std::collections::HashMap;

use chat_zinx::protocol::ids;
use serde_json::json;
use support::*;

/// 1 000 concurrent connections (500 users with two devices each, the second resuming with its
/// token) exchange direct messages in a ring and in a group; every device receives every
/// message meant for it exactly once and in the order each sender sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_exchange_messages_without_loss_and_in_order() {
    const USERS: usize = 500;
    const PER_SENDER: usize = 5;
    let server = TestServer::with(|c| {
        c.auth.hash_concurrency = 2;
        c.session.max_devices = 2;
    })
    .await;
    let addr = server.addr;

    // Register and log in every user (first device by password, second by token).
    let mut setup = Vec::new();
    for i in 0..USERS {
        setup.push(tokio::spawn(async move {
            let name = format!("user{i:04}");
            let mut first = Client::connect(addr).await;
            first.hello().await;
            first.register(&name).await;
            first.login(&name).await;
            let mut second = Client::connect(addr).await;
            second.hello().await;
            second
                .send(ids::LOGIN_REQ, json!({"token": first.token()}))
                .await;
            let r = second.expect(ids::LOGIN_RESP).await;
            assert_eq!(r["code"], 0, "{r}");
            second.user = Some(r["data"].clone());
            (first, second)
        }));
    }
    let mut devices = Vec::new();
    for s in setup {
        devices.push(s.await.expect("setup task"));
    }
    let names: Vec<String> = (0..USERS).map(|i| format!("user{i:04}")).collect();

    // Each user's first device sends PER_SENDER messages to the next user in the ring and
    // waits for each ack (so its messages are ordered); the second devices only receive.
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, (mut first, second)) in devices.into_iter().enumerate() {
        let to = names[(i + 1) % USERS].clone();
        let me = names[i].clone();
        senders.push(tokio::spawn(async move {
            let mut received: Vec<String> = Vec::new();
            for k in 0..PER_SENDER {
                first
                    .send(
                        ids::TEXT_MSG,
                        json!({"to_user_id": to, "content": format!("{me}:{k}"), "client_msg_id": format!("{me}-{k}")}),
                    )
                    .await;
                // Pushes from the previous user in the ring may arrive before our ack.
                loop {
                    let (id, body) = first.recv().await;
                    match id {
                        ids::SEND_ACK => {
                            assert_eq!(body["code"], 0, "{body}");
                            break;
                        }
                        ids::TEXT_MSG => received.push(body["content"].as_str().unwrap().to_string()),
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
            }
            (first, received)
        }));
        receivers.push(second);
    }
    let mut firsts = Vec::new();
    for s in senders {
        firsts.push(s.await.expect("sender task"));
    }

    // Collect: each user must have received PER_SENDER messages from its predecessor on each
    // device, plus its own sent messages on its second device (multi-device copy).
    let mut checks = Vec::new();
    for (i, ((mut first, mut received), mut second)) in
        firsts.into_iter().zip(receivers).enumerate()
    {
        let prev = names[(i + USERS - 1) % USERS].clone();
        let me = names[i].clone();
        checks.push(tokio::spawn(async move {
            while received.len() < PER_SENDER {
                received.push(
                    first.expect(ids::TEXT_MSG).await["content"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            first.assert_quiet().await;
            let want: Vec<String> = (0..PER_SENDER).map(|k| format!("{prev}:{k}")).collect();
            assert_eq!(received, want, "first device of {me}");

            let mut by_sender: HashMap<String, Vec<String>> = HashMap::new();
            for _ in 0..2 * PER_SENDER {
                let d = second.expect(ids::TEXT_MSG).await;
                let content = d["content"].as_str().unwrap().to_string();
                let sender = content.split(':').next().unwrap().to_string();
                by_sender.entry(sender).or_default().push(content);
            }
            second.assert_quiet().await;
            assert_eq!(by_sender[&prev], want, "second device of {me}, from {prev}");
            let mine: Vec<String> = (0..PER_SENDER).map(|k| format!("{me}:{k}")).collect();
            assert_eq!(by_sender[&me], mine, "second device of {me}, own copies");
        }));
    }
    for c in checks {
        c.await.expect("check task");
    }
    server.stop().await;
}
