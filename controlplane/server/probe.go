package server

import (
	"context"

	"google.golang.org/grpc"
)

// probeUnary is the last unary interceptor: it reports every call that got
// past authorization to probe (Config.HandlerProbe), then runs the handler.
// With a nil probe it only passes the call on.
func probeUnary(probe func(method string)) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if probe != nil {
			probe(info.FullMethod)
		}
		return h(ctx, req)
	}
}

// probeStream is probeUnary for streams.
func probeStream(probe func(method string)) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if probe != nil {
			probe(info.FullMethod)
		}
		return h(srv, ss)
	}
}
