//! Where `serve` gets its work (an SQS queue fed by EventBridge rules) and where it tells of
//! outcomes (an EventBridge bus), behind small traits, with their SDK implementations.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, Utc};

use super::sdk::map_err;
use super::{AwsError, AwsResult, ErrorKind};

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message id.
    pub id: String,
    /// The receipt handle of this receive.
    pub receipt: String,
    /// The body (an EventBridge event).
    pub body: String,
    /// How many times it has been received (this time included).
    pub receive_count: u32,
    /// When it was sent to the queue.
    pub sent_at: Option<DateTime<Utc>>,
}

/// An SQS queue.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Long-polls for up to `max` messages, waiting at most `wait`. Messages keep the queue's
    /// own visibility timeout, so that a poison message cycles at the pace the queue's redrive
    /// policy expects.
    async fn receive(&self, max: i32, wait: Duration) -> AwsResult<Vec<Message>>;
    /// Deletes a message: its change is done.
    async fn delete(&self, receipt: &str) -> AwsResult<()>;
    /// Hides a message for `visibility` more (from now).
    async fn extend(&self, receipt: &str, visibility: Duration) -> AwsResult<()>;
    /// Messages waiting (approximate), also a reachability check.
    async fn depth(&self) -> AwsResult<u64>;
    /// Sends a message that becomes visible after `delay` (at most 15 minutes): how the Lambda
    /// hands a change that must wait to a later invocation, as a new message whose receive count
    /// starts again.
    async fn send(&self, body: &str, delay: Duration) -> AwsResult<()>;
}

/// An EventBridge bus for outcome events.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Puts one event with source `ecs-reloader`.
    async fn put(&self, detail_type: &str, detail: &serde_json::Value) -> AwsResult<()>;
}

/// SQS through the SDK.
pub struct SdkQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SdkQueue {
    /// A queue by URL, on the shared SDK configuration.
    pub fn new(config: &aws_config::SdkConfig, url: &str) -> Self {
        SdkQueue {
            client: aws_sdk_sqs::Client::new(config),
            url: url.to_string(),
        }
    }
}

#[async_trait]
impl Queue for SdkQueue {
    async fn receive(&self, max: i32, wait: Duration) -> AwsResult<Vec<Message>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| map_err("sqs:ReceiveMessage", &self.url, e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let attr =
                    |k: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&k)).cloned();
                Some(Message {
                    id: m.message_id()?.to_string(),
                    receipt: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                    sent_at: attr(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|v| v.parse::<i64>().ok())
                        .and_then(DateTime::from_timestamp_millis),
                })
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> AwsResult<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| map_err("sqs:DeleteMessage", &self.url, e))?;
        Ok(())
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> AwsResult<()> {
        let secs = visibility.as_secs().min(12 * 3600) as i32;
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| map_err("sqs:ChangeMessageVisibility", &self.url, e))?;
        Ok(())
    }

    async fn send(&self, body: &str, delay: Duration) -> AwsResult<()> {
        let secs = delay.as_secs().min(900) as i32;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(secs)
            .send()
            .await
            .map_err(|e| map_err("sqs:SendMessage", &self.url, e))?;
        Ok(())
    }

    async fn depth(&self) -> AwsResult<u64> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| map_err("sqs:GetQueueAttributes", &self.url, e))?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

/// EventBridge through the SDK.
pub struct SdkBus {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl SdkBus {
    /// A bus by name or ARN.
    pub fn new(config: &aws_config::SdkConfig, bus: &str) -> Self {
        SdkBus {
            client: aws_sdk_eventbridge::Client::new(config),
            bus: bus.to_string(),
        }
    }
}

/// The `source` of ecs-reloader's outcome events.
pub(crate) const EVENT_SOURCE: &str = "ecs-reloader";

#[async_trait]
impl Bus for SdkBus {
    async fn put(&self, detail_type: &str, detail: &serde_json::Value) -> AwsResult<()> {
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source(EVENT_SOURCE)
            .detail_type(detail_type)
            .detail(detail.to_string())
            .event_bus_name(&self.bus)
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| map_err("events:PutEvents", &self.bus, e))?;
        if out.failed_entry_count() > 0 {
            let why = out
                .entries()
                .first()
                .and_then(|e| e.error_message())
                .unwrap_or("unknown");
            return Err(AwsError::new(
                "events:PutEvents",
                &self.bus,
                ErrorKind::Other,
                why,
            ));
        }
        Ok(())
    }
}
