//! S3 over the SDK, for environment files: `ListObjectsV2` only. No call here (or anywhere)
//! reads an object.

use async_trait::async_trait;
use aws_config::SdkConfig;

use super::{map_err_at, to_chrono, NoRetryWhenUnreachable, Place};
use crate::aws::{AwsResult, ErrorKind, ObjectMeta, Objects};
use crate::reference::S3_LIST_CALL as LIST_CALL;

/// The S3 client of one target (its credentials and region).
pub(super) struct SdkObjects {
    client: aws_sdk_s3::Client,
    place: Place,
}

impl SdkObjects {
    pub(super) fn new(config: &SdkConfig, role: Option<&str>) -> SdkObjects {
        // A custom endpoint (an emulator, a proxy) has no per-bucket host names: address buckets
        // in the path there, as S3 itself is addressed by virtual host elsewhere.
        let conf = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .retry_classifier(NoRetryWhenUnreachable)
            .build();
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        SdkObjects {
            client: aws_sdk_s3::Client::from_conf(conf),
            place: Place {
                role: role.map(str::to_string),
                ..Place::of(config, &region)
            },
        }
    }
}

#[async_trait]
impl Objects for SdkObjects {
    async fn object_meta(&self, bucket: &str, key: &str) -> AwsResult<Option<ObjectMeta>> {
        let resource = format!("{bucket}/{key}");
        // `key` is the smallest key that starts with `key`, and listings are in key order: if
        // the object exists it is the first entry, so one entry is enough.
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| {
                let code = aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e)
                    .map(str::to_string);
                let mut err = map_err_at(LIST_CALL, &resource, &self.place, e);
                match code.as_deref() {
                    Some("NoSuchBucket") => err.kind = ErrorKind::NotFound,
                    Some("AccessDenied" | "AllAccessDisabled") => {
                        err.kind = ErrorKind::AccessDenied
                    }
                    Some("PermanentRedirect" | "AuthorizationHeaderMalformed") => {
                        err.message = format!(
                            "{}: the bucket is in another region than the target's ({}); ecs-reloader lists a bucket in the region of the services that name it",
                            err.message,
                            self.place.region.as_deref().unwrap_or("?")
                        )
                    }
                    _ => {}
                }
                err
            })?;
        Ok(out
            .contents()
            .iter()
            .find(|o| o.key() == Some(key))
            .map(|o| ObjectMeta {
                last_modified: to_chrono(o.last_modified()),
                etag: o.e_tag().map(str::to_string),
            }))
    }
}
