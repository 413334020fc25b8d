//! linkerd2-proxy-api's servers with their long-lived streams (the watches
//! a proxy holds for its life) encoded with `mesh_api::lean::LeanCodec`,
//! whose buffers start small; every other method goes to the generated
//! server as before. The generated code fixes tonic's default codec (8 KiB
//! encode and decode buffers per stream), which a fleet of thousands of
//! proxies pays per watch.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use linkerd2_proxy_api::destination::destination_server::{Destination, DestinationServer};
use linkerd2_proxy_api::inbound::inbound_server_policies_server::{
    InboundServerPolicies, InboundServerPoliciesServer,
};
use linkerd2_proxy_api::outbound::outbound_policies_server::{
    OutboundPolicies, OutboundPoliciesServer,
};
use mesh_api::lean::LeanCodec;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

/// A service whose streaming methods are served leanly.
pub trait LeanRoutes: Send + Sync + Sized + 'static {
    /// The generated server, for every other method.
    type Generated: Clone + NamedService + Send + 'static;

    fn generated(svc: Arc<Self>) -> Self::Generated;

    /// The lean answer to `req`, or `req` back for the generated server.
    fn route<B>(
        svc: &Arc<Self>,
        req: http::Request<B>,
    ) -> Result<BoxFuture<http::Response<Body>, Infallible>, Box<http::Request<B>>>
    where
        B: HttpBody + Send + 'static,
        B::Error: Into<StdError> + Send + 'static;
}

/// `T`'s generated server with its watches served with the lean codec.
pub struct Lean<T: LeanRoutes> {
    svc: Arc<T>,
    inner: T::Generated,
}

impl<T: LeanRoutes> Lean<T> {
    pub fn new(svc: T) -> Self {
        let svc = Arc::new(svc);
        Self {
            inner: T::generated(svc.clone()),
            svc,
        }
    }
}

impl<T: LeanRoutes> Clone for Lean<T> {
    fn clone(&self) -> Self {
        Self {
            svc: self.svc.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T: LeanRoutes> NamedService for Lean<T> {
    const NAME: &'static str = <T::Generated as NamedService>::NAME;
}

impl<T, B> Service<http::Request<B>> for Lean<T>
where
    T: LeanRoutes,
    T::Generated: Service<
            http::Request<B>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<Body>, Infallible>,
        >,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match T::route(&self.svc, req) {
            Ok(answer) => answer,
            Err(req) => self.inner.call(*req),
        }
    }
}

/// One server-streaming method as a function of the request.
struct Method<F, Resp>(F, PhantomData<fn() -> Resp>);

impl<Req, Resp, St, F, Fut> ServerStreamingService<Req> for Method<F, Resp>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<St>, Status>> + Send + 'static,
    St: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    type Response = Resp;
    type ResponseStream = St;
    type Future = BoxFuture<Response<St>, Status>;

    fn call(&mut self, req: Request<Req>) -> Self::Future {
        Box::pin((self.0)(req))
    }
}

/// Serves `req` with `method`, encoded with the lean codec.
fn stream<B, Req, Resp, St, F, Fut>(
    req: http::Request<B>,
    method: F,
) -> BoxFuture<http::Response<Body>, Infallible>
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnMut(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<St>, Status>> + Send + 'static,
    St: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = Grpc::new(LeanCodec::<Resp, Req>::default());
        Ok(grpc
            .server_streaming(Method(method, PhantomData), req)
            .await)
    })
}

impl LeanRoutes for crate::destination::DestinationService {
    type Generated = DestinationServer<Self>;

    fn generated(svc: Arc<Self>) -> Self::Generated {
        DestinationServer::from_arc(svc)
    }

    fn route<B>(
        svc: &Arc<Self>,
        req: http::Request<B>,
    ) -> Result<BoxFuture<http::Response<Body>, Infallible>, Box<http::Request<B>>>
    where
        B: HttpBody + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let svc = svc.clone();
        match req.uri().path() {
            "/io.linkerd.proxy.destination.Destination/Get" => Ok(stream(req, move |r| {
                let svc = svc.clone();
                async move { svc.get(r).await }
            })),
            "/io.linkerd.proxy.destination.Destination/GetProfile" => Ok(stream(req, move |r| {
                let svc = svc.clone();
                async move { svc.get_profile(r).await }
            })),
            _ => Err(Box::new(req)),
        }
    }
}

impl LeanRoutes for crate::policy_service::PolicyService {
    type Generated = InboundServerPoliciesServer<Self>;

    fn generated(svc: Arc<Self>) -> Self::Generated {
        InboundServerPoliciesServer::from_arc(svc)
    }

    fn route<B>(
        svc: &Arc<Self>,
        req: http::Request<B>,
    ) -> Result<BoxFuture<http::Response<Body>, Infallible>, Box<http::Request<B>>>
    where
        B: HttpBody + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let svc = svc.clone();
        match req.uri().path() {
            "/io.linkerd.proxy.inbound.InboundServerPolicies/WatchPort" => {
                Ok(stream(req, move |r| {
                    let svc = svc.clone();
                    async move { svc.watch_port(r).await }
                }))
            }
            _ => Err(Box::new(req)),
        }
    }
}

impl LeanRoutes for crate::outbound::OutboundService {
    type Generated = OutboundPoliciesServer<Self>;

    fn generated(svc: Arc<Self>) -> Self::Generated {
        OutboundPoliciesServer::from_arc(svc)
    }

    fn route<B>(
        svc: &Arc<Self>,
        req: http::Request<B>,
    ) -> Result<BoxFuture<http::Response<Body>, Infallible>, Box<http::Request<B>>>
    where
        B: HttpBody + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let svc = svc.clone();
        match req.uri().path() {
            "/io.linkerd.proxy.outbound.OutboundPolicies/Watch" => Ok(stream(req, move |r| {
                let svc = svc.clone();
                async move { svc.watch(r).await }
            })),
            _ => Err(Box::new(req)),
        }
    }
}
