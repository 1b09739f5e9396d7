package api

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Recoverer turns a panic in an RPC (in an interceptor after it or in the
// handler) into codes.Internal for that call, logged with the method and
// the stack, so that one hostile or unlucky message cannot take the
// control plane down. Chain it first, so that it also covers the
// interceptors after it:
//
//	grpc.ChainUnaryInterceptor(rec.Unary, auth.Unary)
//	grpc.ChainStreamInterceptor(rec.Stream, auth.Stream)
//
// It only sees the goroutine that runs the handler; a handler that starts
// goroutines of its own protects them with Go (see recoverGo).
type Recoverer struct {
	// Log receives one error per panic (default: slog.Default()).
	Log *slog.Logger
	// OnPanic, if set, is called after each recovered panic (tests,
	// metrics).
	OnPanic func(method string)
}

func (r *Recoverer) log() *slog.Logger {
	if r == nil || r.Log == nil {
		return slog.Default()
	}
	return r.Log
}

// recovered logs a panic value and returns the error the caller gets: it
// names the method but never the panic's text, which may hold request data
// or internals.
func (r *Recoverer) recovered(method string, v any) error {
	r.log().Error("panic in gRPC handler; the call fails with Internal and the control plane goes on",
		"method", method, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if r != nil && r.OnPanic != nil {
		r.OnPanic(method)
	}
	return status.Errorf(codes.Internal, "internal error in %s (logged by the control plane)", method)
}

// Unary is the unary server interceptor.
func (r *Recoverer) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if v := recover(); v != nil {
			resp, err = nil, r.recovered(info.FullMethod, v)
		}
	}()
	return h(ctx, req)
}

// Stream is the stream server interceptor.
func (r *Recoverer) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = r.recovered(info.FullMethod, v)
		}
	}()
	return h(srv, ss)
}

// recoverGo runs f on a new goroutine; a panic in f is logged like the
// interceptors' and sent to errc as codes.Internal instead of crashing the
// process (errc must have room, or a reader). A stream handler uses it for
// the goroutines that read hostile messages.
func recoverGo(log *slog.Logger, method string, errc chan<- error, f func()) {
	go func() {
		defer func() {
			if v := recover(); v != nil {
				errc <- (&Recoverer{Log: log}).recovered(method, v)
			}
		}()
		f()
	}()
}
