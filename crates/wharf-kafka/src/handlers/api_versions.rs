//! ApiVersions: the table of [`crate::apis`], exactly. No tagged fields (supported/finalized features) are
//! sent: librdkafka before 2.11 mis-skips non-empty tagged fields in this response and fails every request.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use crate::apis;

/// Served versions.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

fn table() -> Vec<ApiVersion> {
    apis::supported()
        .into_iter()
        .map(|(key, range)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(range.min)
                .with_max_version(range.max)
        })
        .collect()
}

/// Answers ApiVersions.
pub fn handle(_request: ApiVersionsRequest, _version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(table())
}

/// The answer to an ApiVersions request newer than served: error 35 and the table, to be encoded as v0 so
/// that any client can read it and retry at a version it finds there (KIP-511).
pub fn unsupported_version() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(table())
}
