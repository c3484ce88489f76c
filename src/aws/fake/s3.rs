//! The fake's S3: objects with a write date and an ETag, listed (never read) through
//! [`Objects`]; a deleted object is no longer listed, as a delete marker hides it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::FakeAws;
use crate::aws::{AwsResult, ObjectMeta, Objects};
use crate::reference::S3_LIST_CALL as LIST_CALL;

/// One object's current version.
#[derive(Debug, Clone)]
pub(super) struct FakeObject {
    last_modified: DateTime<Utc>,
    etag: String,
}

impl FakeAws {
    /// `PutObject`: writes (or overwrites) `bucket/key` now, at S3's whole-second precision.
    /// Returns the new ETag.
    pub fn put_object(&self, bucket: &str, key: &str) -> String {
        let now = self.now();
        let at = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
        let mut w = self.w();
        let etag = format!("\"{}\"", Self::next_id(&mut w, "etag"));
        w.objects.insert(
            (bucket.to_string(), key.to_string()),
            FakeObject {
                last_modified: at,
                etag: etag.clone(),
            },
        );
        etag
    }

    /// `DeleteObject`: the key is no longer listed.
    pub fn delete_object(&self, bucket: &str, key: &str) {
        self.w()
            .objects
            .remove(&(bucket.to_string(), key.to_string()));
    }
}

#[async_trait]
impl Objects for FakeAws {
    async fn object_meta(&self, bucket: &str, key: &str) -> AwsResult<Option<ObjectMeta>> {
        self.gate(LIST_CALL, &format!("{bucket}/{key}"))?;
        let w = self.w();
        Ok(w.objects
            .get(&(bucket.to_string(), key.to_string()))
            .map(|o| ObjectMeta {
                last_modified: Some(o.last_modified),
                etag: Some(o.etag.clone()),
            }))
    }
}
