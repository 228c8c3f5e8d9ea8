//! The `Store` contract, checked against every implementation: the in-process store and the
//! NATS JetStream store on a real nats-server. Both must give the same answers.

use std::sync::Arc;

use chat_zinx::backend::memory::MemoryStore;
use chat_zinx::backend::nats::{Nats, NatsSettings, NatsStore};
use chat_zinx::core::model::*;
use chat_zinx::core::ports::{BackendError, Missing, Store, Unique};
use chat_zinx::harness::{NatsCluster, NatsServer};

fn user(name: &str) -> NewUser {
    NewUser {
        uuid: uuid::Uuid::new_v4().to_string(),
        username: name.into(),
        email: format!("{name}@x"),
        password_hash: "h".into(),
        created_at: 1,
    }
}

fn text(conv: ConvId, sender: UserId, content: &str) -> NewMessage {
    let body = match conv {
        ConvId::Group(g) => MessageBody::Group {
            group_id: g,
            content: content.into(),
        },
        ConvId::Direct(a, b) => MessageBody::Direct {
            recipient_id: if a == sender { b } else { a },
            to_user_id: "x".into(),
            content: content.into(),
            msg_type: String::new(),
            sent_at: None,
        },
    };
    NewMessage {
        msg_id: uuid::Uuid::new_v4().to_string(),
        conv,
        sender_id: sender,
        sender_uuid: "u".into(),
        sender_name: "n".into(),
        timestamp: now_ms(),
        body,
    }
}

async fn nats_store(server: &NatsServer) -> Arc<dyn Store> {
    nats_store_on(&server.url(), "CONFORMANCE", 1).await
}

/// A store on `url` whose log stream (and the buckets named after it) is `stream`, with
/// `replicas` copies of each.
async fn nats_store_on(url: &str, stream: &str, replicas: usize) -> Arc<dyn Store> {
    let conn = try_nats_store_on(url, stream, replicas).await;
    conn.expect("connects to the test nats-server")
}

/// A store on every server of `cluster` with three replicas; a failure to connect shows
/// each server's view of the cluster and the end of its log.
async fn nats_store_in(cluster: &NatsCluster, stream: &str) -> Arc<dyn Store> {
    match try_nats_store_on(&cluster.urls(), stream, 3).await {
        Ok(store) => store,
        Err(e) => panic!(
            "connects to the test cluster: {e}\n{}",
            cluster.diagnostics().await
        ),
    }
}

async fn try_nats_store_on(
    url: &str,
    stream: &str,
    replicas: usize,
) -> Result<Arc<dyn Store>, BackendError> {
    let conn = Nats::connect(&NatsSettings {
        url: url.into(),
        stream: stream.into(),
        replicas,
        max_age: std::time::Duration::ZERO,
        duplicate_window: std::time::Duration::from_secs(600),
        // A replicated write waits for a quorum of three servers that share two cores with
        // the whole suite: generous, so that a loaded machine is not taken for a fault.
        request_timeout: std::time::Duration::from_secs(if replicas > 1 { 20 } else { 5 }),
        reconnect_wait: std::time::Duration::from_millis(250),
        auth: Default::default(),
        tls: Default::default(),
    })
    .await?;
    Ok(Arc::new(NatsStore(conn)))
}

/// Two stores ("nodes") on a 3-server cluster, sharing one log with three replicas: the
/// setting the docs recommend for production. Each connects to a different server, so the
/// appends of each reach the stream leader through another route.
async fn replicated_stores(
    cluster: &NatsCluster,
    stream: &str,
) -> (Arc<dyn Store>, Arc<dyn Store>) {
    let nodes = cluster.nodes();
    let a = nats_store_on(&nodes[0].url(), stream, 3).await;
    let b = nats_store_on(&nodes[1].url(), stream, 3).await;
    (a, b)
}

async fn accounts(store: Arc<dyn Store>) {
    let a = store.create_user(user("Alice")).await.unwrap();
    let b = store.create_user(user("bob")).await.unwrap();
    assert!(b.id > a.id, "ids increase");
    assert!(matches!(
        store.create_user(user("ALICE")).await,
        Err(BackendError::Conflict(Unique::Username))
    ));
    assert_eq!(store.user_by_name("alice").await.unwrap().unwrap().id, a.id);
    assert_eq!(
        store
            .user_by_uuid(&a.uuid.to_uppercase())
            .await
            .unwrap()
            .unwrap()
            .id,
        a.id
    );
    assert!(store.user_by_name("nobody").await.unwrap().is_none());
    assert!(store.user_by_id(9999).await.unwrap().is_none());
    let both = store.users_by_ids(&[b.id, 9999, a.id]).await.unwrap();
    assert_eq!(
        both.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![b.id, a.id]
    );
    assert_eq!(store.record_login(a.id, 10).await.unwrap(), None);
    assert_eq!(store.record_login(a.id, 20).await.unwrap(), Some(10));
    // A name taken once is never given to another user, an id never reused.
    let c = store.create_user(user("carol")).await.unwrap();
    assert!(c.id > b.id);
}

async fn groups(store: Arc<dyn Store>) {
    let (g, owner) = store
        .create_group(NewGroup {
            name: "Team".into(),
            owner_id: 1,
            description: "d".into(),
            avatar: String::new(),
            created_at: 5,
        })
        .await
        .unwrap();
    assert_eq!((owner.role, g.member_count), (Role::Owner, 1));
    assert!(matches!(
        store
            .create_group(NewGroup {
                name: "TEAM".into(),
                owner_id: 2,
                description: String::new(),
                avatar: String::new(),
                created_at: 6,
            })
            .await,
        Err(BackendError::Conflict(Unique::GroupName))
    ));
    store.add_member(g.id, 2, Role::Member, 7).await.unwrap();
    assert!(matches!(
        store.add_member(g.id, 2, Role::Member, 8).await,
        Err(BackendError::Conflict(Unique::Membership))
    ));
    assert!(matches!(
        store.add_member(777, 2, Role::Member, 8).await,
        Err(BackendError::NotFound(Missing::Group))
    ));
    assert_eq!(store.group(g.id).await.unwrap().unwrap().member_count, 2);
    store.set_role(g.id, 2, Role::Admin).await.unwrap();
    assert_eq!(
        store.member(g.id, 2).await.unwrap().unwrap().role,
        Role::Admin
    );
    assert_eq!(store.groups_of(2).await.unwrap(), vec![g.id]);
    let renamed = store
        .update_group(
            g.id,
            GroupPatch {
                name: Some("Crew".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((renamed.name.as_str(), renamed.member_count), ("Crew", 2));
    // The old name is free again.
    store
        .create_group(NewGroup {
            name: "team".into(),
            owner_id: 3,
            description: String::new(),
            avatar: String::new(),
            created_at: 9,
        })
        .await
        .unwrap();
    store.remove_member(g.id, 2).await.unwrap();
    assert!(matches!(
        store.remove_member(g.id, 2).await,
        Err(BackendError::NotFound(Missing::Membership))
    ));
    assert!(store.groups_of(2).await.unwrap().is_empty());
    assert_eq!(store.members(g.id).await.unwrap().len(), 1);
}

async fn log_and_history(store: Arc<dyn Store>) {
    let g = ConvId::Group(1);
    let p = ConvId::direct(1, 2);
    let mut group_seqs = Vec::new();
    let mut direct_seqs = Vec::new();
    for i in 0..25 {
        group_seqs.push(
            store
                .append(text(g, 1, &format!("g{i}")), None)
                .await
                .unwrap()
                .message
                .seq,
        );
        direct_seqs.push(
            store
                .append(text(p, 2, &format!("p{i}")), None)
                .await
                .unwrap()
                .message
                .seq,
        );
    }
    assert!(group_seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        store.log_tail().await.unwrap(),
        *direct_seqs.last().unwrap()
    );
    // Pages of 10, newest first, walking backwards without gaps or repeats.
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = store.history(g, before, 10).await.unwrap();
        pages += 1;
        seen.extend(page.messages.iter().map(|m| m.content().to_string()));
        before = page.messages.last().map(|m| m.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..25).rev().map(|i| format!("g{i}")).collect();
    assert_eq!(seen, want);
    // `before` that is not a message of the conversation.
    let page = store.history(g, Some(direct_seqs[3]), 100).await.unwrap();
    assert_eq!(page.messages.len(), 4, "g0..g3 lie before p3");
    assert!(!page.has_more);
    // Forward reads.
    let after = store.after(p, direct_seqs[20], 3).await.unwrap();
    assert_eq!(
        after
            .iter()
            .map(|m| m.content().to_string())
            .collect::<Vec<_>>(),
        ["p21", "p22", "p23"]
    );
    assert!(store
        .after(p, *direct_seqs.last().unwrap(), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .history(ConvId::Group(99), None, 5)
        .await
        .unwrap()
        .messages
        .is_empty());
    // Relations follow direct messages.
    assert_eq!(store.peers_of(1).await.unwrap(), vec![2]);
    assert_eq!(store.peers_of(2).await.unwrap(), vec![1]);
}

async fn dedupe(store: Arc<dyn Store>) {
    let key = DedupeKey {
        sender_id: 5,
        client_msg_id: "c-1".into(),
    };
    let first = store
        .append(text(ConvId::Group(3), 5, "x"), Some(key.clone()))
        .await
        .unwrap();
    let again = store
        .append(text(ConvId::Group(3), 5, "x"), Some(key))
        .await
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.message, again.message);
    assert_eq!(
        store
            .history(ConvId::Group(3), None, 10)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
}

async fn cursors(store: Arc<dyn Store>) {
    assert_eq!(store.cursor(7).await.unwrap(), DeliveryCursor::default());
    store.advance_cursor(7, 50).await.unwrap();
    store.advance_cursor(7, 40).await.unwrap();
    store.mark_undelivered(7, 45).await.unwrap();
    store.mark_undelivered(7, 42).await.unwrap();
    let c = store.cursor(7).await.unwrap();
    assert_eq!((c.delivered, c.undelivered_from), (50, Some(42)));
    store.settle_cursor(7, Some(40), 60).await.unwrap();
    assert_eq!(
        store.cursor(7).await.unwrap().undelivered_from,
        Some(42),
        "a newer mark stays"
    );
    store.settle_cursor(7, Some(42), 70).await.unwrap();
    let c = store.cursor(7).await.unwrap();
    assert_eq!((c.delivered, c.undelivered_from), (70, None));
}

macro_rules! conformance {
    ($($name:ident),*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(Arc::new(MemoryStore::default())).await;
                }
            )*
        }
        mod nats {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = NatsServer::start().await;
                    super::$name(nats_store(&server).await).await;
                }
            )*
        }
    };
}

conformance!(accounts, groups, log_and_history, dedupe, cursors);

/// The whole contract again on a 3-server cluster with three replicas of the log and the
/// buckets. One cluster serves every check (each in its own stream and buckets), so the
/// suite starts one cluster here instead of five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_on_three_replicas() {
    let cluster = NatsCluster::start().await;
    let first = cluster.nodes()[0].url();
    accounts(nats_store_in(&cluster, "C_ACCOUNTS").await).await;
    drop_log(&first, "C_ACCOUNTS").await;
    groups(nats_store_in(&cluster, "C_GROUPS").await).await;
    drop_log(&first, "C_GROUPS").await;
    log_and_history(nats_store_in(&cluster, "C_LOG").await).await;
    drop_log(&first, "C_LOG").await;
    dedupe(nats_store_in(&cluster, "C_DEDUPE").await).await;
    drop_log(&first, "C_DEDUPE").await;
    cursors(nats_store_in(&cluster, "C_CURSORS").await).await;
}

/// Deletes a store's log stream (through the server at `url`), so that the next store on the same servers starts with an
/// empty log (every store's log takes the same subjects; its buckets have names of their own).
async fn drop_log(url: &str, stream: &str) {
    let client = async_nats::connect(url).await.expect("connects");
    async_nats::jetstream::new(client)
        .delete_stream(stream)
        .await
        .expect("the log stream is deleted");
}

/// Two nodes appending to one conversation at once: every message lands once and the
/// backward links stay a single chain (history sees all of them, in log order).
async fn concurrent_appends(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let conv = ConvId::Group(42);
    tokio::join!(
        async {
            for i in 0..40 {
                a.append(text(conv, 1, &format!("a{i}")), None)
                    .await
                    .expect("an append that lost a race is retried, never refused");
            }
        },
        async {
            for i in 0..40 {
                b.append(text(conv, 2, &format!("b{i}")), None)
                    .await
                    .expect("an append that lost a race is retried, never refused");
            }
        }
    );
    let page = a.history(conv, None, 100).await.unwrap();
    assert_eq!(page.messages.len(), 80);
    assert!(page.messages.windows(2).all(|w| w[0].seq > w[1].seq));
    let forward = b.after(conv, 0, 100).await.unwrap();
    let mut back: Vec<Seq> = page.messages.iter().map(|m| m.seq).collect();
    back.reverse();
    assert_eq!(forward.iter().map(|m| m.seq).collect::<Vec<_>>(), back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_two_nodes_keep_one_history_chain() {
    let server = NatsServer::start().await;
    concurrent_appends(nats_store(&server).await, nats_store(&server).await).await;
}

/// On a replicated stream the server answers a lost race with another error code (10164,
/// not 10071); it must be retried the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_on_three_replicas_keep_one_history_chain() {
    let cluster = NatsCluster::start().await;
    let (a, b) = replicated_stores(&cluster, "C_CONCURRENT").await;
    concurrent_appends(a, b).await;
}

/// Sends `n` messages the way a connection's send pipeline does: each append starts once the
/// previous one's place in the log is fixed, up to 16 under way. Returns the most that were
/// under way at once.
async fn pipelined_sends(
    store: Arc<dyn Store>,
    conv: ConvId,
    sender: UserId,
    prefix: &str,
    n: usize,
) -> usize {
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let under_way = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut jobs = futures_util::stream::FuturesUnordered::new();
    for i in 0..n {
        let msg = text(conv, sender, &format!("{prefix}{i}"));
        most.fetch_max(
            under_way.fetch_add(1, Ordering::SeqCst) + 1,
            Ordering::SeqCst,
        );
        // The next append starts once this one's place in the log is fixed.
        let ack = store.place(msg, None).await.expect("the append is placed");
        let under_way = under_way.clone();
        jobs.push(tokio::spawn(async move {
            let appended = ack.await;
            under_way.fetch_sub(1, Ordering::SeqCst);
            appended.expect("append succeeds")
        }));
        while jobs.len() >= 16 {
            jobs.next().await.expect("a job").expect("no panic");
        }
    }
    while let Some(done) = jobs.next().await {
        done.expect("no panic");
    }
    most.load(Ordering::SeqCst)
}

/// Every message of `conv` through history pages of `page` (newest first, each page from the
/// last one's oldest), checked against the forward read.
async fn history_by_pages(store: &Arc<dyn Store>, conv: ConvId, page: usize) -> Vec<StoredMessage> {
    let mut all: Vec<StoredMessage> = Vec::new();
    let mut before = None;
    loop {
        let p = store.history(conv, before, page).await.unwrap();
        assert!(p.messages.len() <= page);
        all.extend(p.messages.iter().cloned());
        if !p.has_more {
            break;
        }
        before = Some(all.last().expect("a page with more has messages").seq);
    }
    all
}

/// Two nodes, each sending a burst with overlapping appends to one conversation: nothing is
/// lost or doubled, each sender's messages are logged in its send order, and history pages
/// (whose walk fills the gaps that overlapping appends leave in the backward links) list
/// exactly what a forward read lists.
async fn overlapping_appends(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let conv = ConvId::Group(77);
    // A conversation with a history before the bursts.
    for i in 0..5 {
        a.append(text(conv, 9, &format!("old{i}")), None)
            .await
            .unwrap();
    }
    let (most_a, most_b) = tokio::join!(
        pipelined_sends(a.clone(), conv, 1, "a", 120),
        pipelined_sends(b.clone(), conv, 2, "b", 120)
    );
    // The appends really overlapped (the default `place` never lets them).
    assert!(
        most_a > 1 && most_b > 1,
        "most under way: {most_a}, {most_b}"
    );

    let forward = a.after(conv, 0, 1000).await.unwrap();
    assert_eq!(forward.len(), 245);
    for (sender, prefix) in [(1, "a"), (2, "b"), (9, "old")] {
        let sent: Vec<String> = forward
            .iter()
            .filter(|m| m.sender_id == sender)
            .map(|m| match &m.body {
                MessageBody::Group { content, .. } => content.clone(),
                other => panic!("unexpected body {other:?}"),
            })
            .collect();
        let n = if sender == 9 { 5 } else { 120 };
        let expected: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(sent, expected, "sender {sender} in send order");
    }
    let mut expected: Vec<Seq> = forward.iter().map(|m| m.seq).collect();
    expected.reverse();
    for page in [7, 20, 1000] {
        for store in [&a, &b] {
            let back: Vec<Seq> = history_by_pages(store, conv, page)
                .await
                .iter()
                .map(|m| m.seq)
                .collect();
            assert_eq!(back, expected, "pages of {page}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_appends_from_two_nodes_keep_each_senders_order_and_the_whole_history() {
    let server = NatsServer::start().await;
    overlapping_appends(nats_store(&server).await, nats_store(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_appends_on_three_replicas_keep_each_senders_order_and_the_whole_history() {
    let cluster = NatsCluster::start().await;
    let (a, b) = replicated_stores(&cluster, "C_OVERLAP").await;
    overlapping_appends(a, b).await;
}

/// The in-process store keeps the same contract under a pipelined sender.
#[tokio::test]
async fn a_pipelined_sender_on_the_memory_store_keeps_its_order() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let conv = ConvId::Group(5);
    pipelined_sends(store.clone(), conv, 1, "m", 50).await;
    let back = history_by_pages(&store, conv, 7).await;
    let contents: Vec<String> = back
        .iter()
        .rev()
        .map(|m| match &m.body {
            MessageBody::Group { content, .. } => content.clone(),
            other => panic!("unexpected body {other:?}"),
        })
        .collect();
    assert_eq!(
        contents,
        (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

/// The first message of a direct conversation was stored but writing the chat relation
/// failed (the send was answered "try again"): the retry, a duplicate, writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_first_message_writes_the_chat_relation_its_first_attempt_did_not() {
    let server = NatsServer::start().await;
    let store = nats_store_on(&server.url(), "RELATIONS", 1).await;
    let key = DedupeKey {
        sender_id: 1,
        client_msg_id: "first".into(),
    };
    let conv = ConvId::direct(1, 2);
    store
        .append(text(conv, 1, "hi"), Some(key.clone()))
        .await
        .unwrap();
    // As if the relation writes after the append had failed.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let meta = js.get_key_value("RELATIONS_meta").await.unwrap();
    for user in [1, 2] {
        meta.purge(format!("peers.{user}")).await.unwrap();
    }
    assert!(store.peers_of(1).await.unwrap().is_empty());

    let again = store.append(text(conv, 1, "hi"), Some(key)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(store.peers_of(1).await.unwrap(), vec![2]);
    assert_eq!(store.peers_of(2).await.unwrap(), vec![1]);
}
