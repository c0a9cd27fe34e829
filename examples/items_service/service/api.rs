//! The items API: handlers, and the rules a client's input must follow.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use floodgate_cache::CacheHandle;
use floodgate_redis::Broadcast;
use serde::Deserialize;

use super::problem::{ApiError, FieldError};
use super::storage::{Item, ItemFields, Store};

/// What a write makes stale.
const ITEMS: &str = "/items";
/// How long a write waits for Redis to take its invalidation.
const PUBLISH_DEADLINE: Duration = Duration::from_millis(100);

/// Items per page when the client does not say.
pub(crate) const DEFAULT_PAGE: u32 = 20;
/// The largest page a client may ask for.
pub(crate) const MAX_PAGE: u32 = 100;
const MAX_NAME_CHARS: usize = 100;
const MAX_DESCRIPTION_CHARS: usize = 1000;

/// `?limit=&offset=` of the listing.
#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    limit: Option<u32>,
    offset: Option<u64>,
}

/// The JSON body of `POST /items` and `PUT /items/{id}`, before validation.
///
/// `description` and `price` may be left out: the seeds' load test posts
/// `{"name":"x","description":"y"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ItemBody {
    name: String,
    description: Option<String>,
    price: Option<f64>,
}

impl ItemBody {
    /// The fields, or every rule they break.
    fn validate(self) -> Result<ItemFields, ApiError> {
        let mut errors = Vec::new();
        let name_chars = self.name.chars().count();
        if self.name.trim().is_empty() {
            errors.push(FieldError {
                field: "name",
                message: "must not be empty",
            });
        } else if name_chars > MAX_NAME_CHARS {
            errors.push(FieldError {
                field: "name",
                message: "must be at most 100 characters",
            });
        }
        if self
            .description
            .as_ref()
            .is_some_and(|description| description.chars().count() > MAX_DESCRIPTION_CHARS)
        {
            errors.push(FieldError {
                field: "description",
                message: "must be at most 1000 characters",
            });
        }
        // JSON has no NaN or infinity, but a number too large for f64 parses as infinity.
        if self
            .price
            .is_some_and(|price| !(price >= 0.0 && price.is_finite()))
        {
            errors.push(FieldError {
                field: "price",
                message: "must be a finite number, 0 or more",
            });
        }
        if errors.is_empty() {
            Ok(ItemFields {
                name: self.name,
                description: self.description,
                price: self.price,
            })
        } else {
            Err(ApiError::Invalid(errors))
        }
    }
}

/// What the handlers share: the database, and the cache in front of them.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) store: Store,
    pub(crate) cache: CacheHandle,
    /// The other replicas, told what each write made stale.
    pub(crate) invalidations: Option<Broadcast>,
    /// What reads say about caching: `s-maxage`, so that this service's cache keeps them
    /// (and drops them on every write) while clients revalidate each time.
    pub(crate) cache_control: HeaderValue,
}

impl App {
    /// After a write, nothing stored under `/items` is current: every list page may have
    /// changed, not only the item's own URI (which the cache drops by itself). The other
    /// replicas' caches are told too. If Redis does not take the message, they serve what
    /// they hold for at most its `s-maxage`; the write itself stands.
    async fn written(&self) {
        self.cache.purge_prefix(ITEMS);
        if let Some(invalidations) = &self.invalidations {
            let published = tokio::time::timeout(PUBLISH_DEADLINE, invalidations.publish(ITEMS));
            match published.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "could not tell the other replicas"),
                Err(_) => tracing::warn!("telling the other replicas took too long"),
            }
        }
    }

    fn cacheable<T>(&self, body: T) -> ([(HeaderName, HeaderValue); 1], T) {
        ([(header::CACHE_CONTROL, self.cache_control.clone())], body)
    }
}

/// `GET /items`: one page of items, in id order, with the total.
pub(crate) async fn list(
    State(app): State<App>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "limit",
            message: "must be between 1 and 100",
        }]));
    }
    let page = app.store.list(limit, query.offset.unwrap_or(0)).await?;
    Ok(app.cacheable(Json(page)))
}

/// `GET /items/{id}`.
pub(crate) async fn get(
    State(app): State<App>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id?;
    let item = app.store.get(id).await?.ok_or(ApiError::NotFound)?;
    Ok(app.cacheable(Json(item)))
}

/// `POST /items`: 201 with the stored item and its `Location`.
pub(crate) async fn create(
    State(app): State<App>,
    body: Result<Json<ItemBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let item = app.store.create(&body.validate()?).await?;
    app.written().await;
    let location = format!("/items/{}", item.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(item),
    )
        .into_response())
}

/// `PUT /items/{id}`: replaces every field of an existing item.
pub(crate) async fn replace(
    State(app): State<App>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<ItemBody>, JsonRejection>,
) -> Result<Json<Item>, ApiError> {
    let Path(id) = id?;
    let Json(body) = body?;
    let fields = body.validate()?;
    let item = app
        .store
        .update(id, &fields)
        .await?
        .ok_or(ApiError::NotFound)?;
    app.written().await;
    Ok(Json(item))
}

/// `DELETE /items/{id}`: 204, or 404 when there was nothing to delete.
pub(crate) async fn delete(
    State(app): State<App>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    if app.store.delete(id).await? {
        app.written().await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

/// Any path no route serves.
pub(crate) async fn no_route() -> ApiError {
    ApiError::NoRoute
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str, description: Option<&str>, price: Option<f64>) -> ItemBody {
        ItemBody {
            name: name.to_owned(),
            description: description.map(str::to_owned),
            price,
        }
    }

    fn failing_fields(body: ItemBody) -> Vec<&'static str> {
        match body.validate() {
            Ok(_) => Vec::new(),
            Err(ApiError::Invalid(errors)) => errors.iter().map(|error| error.field).collect(),
            Err(other) => panic!("validation gave {other:?}"),
        }
    }

    #[test]
    fn names_are_one_to_one_hundred_characters_counted_as_characters() {
        assert_eq!(failing_fields(body("x", None, None)), Vec::<&str>::new());
        assert_eq!(
            failing_fields(body(&"é".repeat(100), None, None)),
            Vec::<&str>::new()
        );
        assert_eq!(failing_fields(body(&"x".repeat(101), None, None)), ["name"]);
        assert_eq!(failing_fields(body("", None, None)), ["name"]);
        assert_eq!(failing_fields(body("   ", None, None)), ["name"]);
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        let broken = body("", Some(&"d".repeat(1001)), Some(-0.01));
        assert_eq!(failing_fields(broken), ["name", "description", "price"]);
        assert_eq!(
            failing_fields(body("x", Some(&"d".repeat(1000)), Some(0.0))),
            Vec::<&str>::new()
        );
        assert_eq!(
            failing_fields(body("x", None, Some(f64::INFINITY))),
            ["price"]
        );
    }
}
