//! From frame bytes to typed requests and from typed responses to frame bytes, through the `kafka-protocol`
//! codec. Wharf writes no message codec; this module only checks what must be checked before the codec runs
//! (the 8 fixed header bytes, whether the API and version are served) and turns codec failures into
//! [`RequestError`]s.
//!
//! Decoding runs under [`wharf_alloc::GuardedAlloc`]: the codec pre-allocates from counts read off the wire,
//! and the allocator makes such a lying count cost address space instead of aborting the process.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::apis;

/// A request whose header parsed and whose API and version are served.
#[derive(Debug)]
pub struct Request {
    /// The API.
    pub api_key: ApiKey,
    /// The request version (also the response version).
    pub version: i16,
    /// The decoded request header.
    pub header: RequestHeader,
    /// The body, not yet decoded.
    pub body: Bytes,
}

/// Why a request cannot be served. Except for [`RequestError::UnsupportedApiVersionsVersion`], each closes
/// the connection, as Kafka does: after a malformed request the client and broker no longer agree on framing
/// or state.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Fewer than the 8 bytes of api key, version and correlation id.
    #[error("request of {0} bytes is shorter than a request header")]
    TooShort(usize),
    /// An API key the codec does not know, or that Wharf does not serve.
    #[error("API key {0} is not served")]
    UnknownApi(i16),
    /// A served API at a version outside its range.
    #[error("{api:?} v{version} is not supported (served: v{min}-v{max})")]
    UnsupportedVersion {
        /// The API.
        api: ApiKey,
        /// The requested version.
        version: i16,
        /// Lowest served version.
        min: i16,
        /// Highest served version.
        max: i16,
    },
    /// ApiVersions at a version above the served range: answered with error 35 in a v0 response.
    #[error("ApiVersions v{version} is newer than served")]
    UnsupportedApiVersionsVersion {
        /// The correlation id to answer with.
        correlation_id: i32,
        /// The requested version.
        version: i16,
    },
    /// The codec refused the header or body.
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        /// The API.
        api: ApiKey,
        /// The version.
        version: i16,
        /// The codec's message.
        reason: String,
    },
}

fn fixed_i16(frame: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Reads the request header from a whole frame (without its size prefix).
pub fn parse_request(frame: Bytes) -> Result<Request, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::TooShort(frame.len()));
    }
    let raw_key = fixed_i16(&frame, 0);
    let version = fixed_i16(&frame, 2);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|()| RequestError::UnknownApi(raw_key))?;
    let range = apis::range(api_key).ok_or(RequestError::UnknownApi(raw_key))?;
    if version < range.min || version > range.max {
        if api_key == ApiKey::ApiVersions && version > range.max {
            return Err(RequestError::UnsupportedApiVersionsVersion {
                correlation_id,
                version,
            });
        }
        return Err(RequestError::UnsupportedVersion {
            api: api_key,
            version,
            min: range.min,
            max: range.max,
        });
    }
    let mut body = frame;
    let header_version = api_key.request_header_version(version);
    let header =
        RequestHeader::decode(&mut body, header_version).map_err(|e| RequestError::Malformed {
            api: api_key,
            version,
            reason: e.to_string(),
        })?;
    Ok(Request {
        api_key,
        version,
        header,
        body,
    })
}

/// Decodes a request body of type `T` at `version`.
pub fn decode_body<T: Decodable>(request: &mut Request) -> Result<T, RequestError> {
    T::decode(&mut request.body, request.version).map_err(|e| RequestError::Malformed {
        api: request.api_key,
        version: request.version,
        reason: format!("{e:#}"),
    })
}

/// Decodes the body with the codec for the request's API and runs Wharf's own record-batch checks on produce
/// data, without executing anything: what the fuzz targets and the decoding tests exercise.
pub fn decode_and_check(request: &mut Request) -> Result<(), RequestError> {
    let kind = kafka_protocol::messages::RequestKind::decode(
        request.api_key,
        &mut request.body,
        request.version,
    )
    .map_err(|e| RequestError::Malformed {
        api: request.api_key,
        version: request.version,
        reason: format!("{e:#}"),
    })?;
    if let kafka_protocol::messages::RequestKind::Produce(produce) = kind {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                if let Some(records) = &partition.records {
                    let _ = crate::batch::split(records, usize::MAX);
                }
            }
        }
    }
    Ok(())
}

/// Appends one size-prefixed response frame to `out`.
pub fn encode_response(
    out: &mut BytesMut,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<()> {
    let start = out.len();
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(out, api_key.response_header_version(version))?;
    body.encode(out, version)?;
    let size = i32::try_from(out.len() - start - 4)?;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Encodes a typed response body (helper for handlers' tests and the connection).
pub fn encode_body<T: Encodable>(body: &T, version: i16) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::new();
    body.encode(&mut out, version)?;
    Ok(out)
}
