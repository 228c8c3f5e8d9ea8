//! The [`Bus`] port on core NATS: `cz.node.<node>` carries the events for one node,
//! `cz.nodes` the events for every node, `cz.group.<group>` a group's messages (a node listens
//! while it has a local online member).
//! Not durable: the log is.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{unavailable, unavailable_because, Nats};
use crate::core::model::*;
use crate::core::ports::*;

/// The bus on core NATS.
pub struct NatsBus(pub Arc<Nats>);

fn node_subject(node: &str) -> String {
    format!("cz.node.{node}")
}

/// Every node listens here.
const ALL_NODES_SUBJECT: &str = "cz.nodes";

fn group_subject(group: GroupId) -> String {
    format!("cz.group.{group}")
}

/// Reads one subscription and hands its events to the node, until the subscription ends.
async fn pump(
    mut sub: impl futures_util::Stream<Item = async_nats::Message> + Unpin,
    inbound: Arc<dyn BusInbound>,
) {
    while let Some(msg) = sub.next().await {
        match serde_json::from_slice::<BusEvent>(&msg.payload) {
            Ok(event) => inbound.deliver(event).await,
            Err(e) => warn!(subject = %msg.subject, error = %e, "undecodable bus event dropped"),
        }
    }
    debug!("bus subscription ended");
}

#[async_trait]
impl Bus for NatsBus {
    async fn attach(&self, node_id: &str, inbound: Arc<dyn BusInbound>) -> BackendResult<()> {
        let client = &self.0.client;
        let mine = client
            .subscribe(node_subject(node_id))
            .await
            .map_err(unavailable)?;
        let all = client
            .subscribe(ALL_NODES_SUBJECT)
            .await
            .map_err(unavailable)?;
        *self.0.inbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(inbound.clone());
        let task = tokio::spawn(pump(futures_util::stream::select(mine, all), inbound));
        if let Some(old) = self
            .0
            .node_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
        Ok(())
    }

    async fn publish_node(&self, node_id: &str, event: BusEvent) -> BackendResult<()> {
        let payload = Bytes::from(serde_json::to_vec(&event).expect("serialises"));
        self.0
            .client
            .publish(node_subject(node_id), payload)
            .await
            .map_err(unavailable)
    }

    async fn publish_all(&self, event: BusEvent) -> BackendResult<()> {
        let payload = Bytes::from(serde_json::to_vec(&event).expect("serialises"));
        self.0
            .client
            .publish(ALL_NODES_SUBJECT, payload)
            .await
            .map_err(unavailable)
    }

    async fn publish_group(&self, group: GroupId, event: BusEvent) -> BackendResult<()> {
        let payload = Bytes::from(serde_json::to_vec(&event).expect("serialises"));
        self.0
            .client
            .publish(group_subject(group), payload)
            .await
            .map_err(unavailable)
    }

    async fn subscribe_group(&self, group: GroupId) -> BackendResult<()> {
        let inbound = self
            .0
            .inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| unavailable_because("the bus is not attached yet"))?;
        let sub = self
            .0
            .client
            .subscribe(group_subject(group))
            .await
            .map_err(unavailable)?;
        let task = tokio::spawn(pump(sub, inbound));
        if let Some(old) = self
            .0
            .group_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, task)
        {
            old.abort();
        }
        Ok(())
    }

    async fn health(&self) -> BackendResult<()> {
        if self.0.is_connected() {
            Ok(())
        } else {
            Err(unavailable_because(
                "not connected to any NATS server; reconnecting",
            ))
        }
    }

    async fn close(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut groups = self.0.group_tasks.lock().unwrap_or_else(|e| e.into_inner());
            let mut all: Vec<JoinHandle<()>> = groups.drain().map(|(_, t)| t).collect();
            all.extend(
                self.0
                    .node_task
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
            all
        };
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        *self.0.inbound.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn unsubscribe_group(&self, group: GroupId) -> BackendResult<()> {
        if let Some(task) = self
            .0
            .group_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group)
        {
            // Dropping the subscriber with the task unsubscribes.
            task.abort();
        }
        Ok(())
    }
}
