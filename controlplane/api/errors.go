// Package api holds the control plane's gRPC handlers. They are thin: they
// validate input, call the domain (store, fleet, ingest), and map errors to
// gRPC status codes through one table.
package api

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/policy"
)

// errTable maps domain errors to gRPC codes (like etcd's v3rpc/util.go).
var errTable = []struct {
	err  error
	code codes.Code
}{
	{store.ErrNotFound, codes.NotFound},
	{store.ErrTokenUnknown, codes.Unauthenticated},
	{store.ErrTokenExpired, codes.Unauthenticated},
	{store.ErrTokenUsedUp, codes.Unauthenticated},
	{store.ErrNameTaken, codes.AlreadyExists},
	{store.ErrExists, codes.AlreadyExists},
	{store.ErrRevoked, codes.PermissionDenied},
	{fleet.ErrRevoked, codes.PermissionDenied},
	{store.ErrState, codes.FailedPrecondition},
	{store.ErrTerminal, codes.FailedPrecondition},
}

// toStatus converts an error from the domain into a gRPC status error whose
// message is the error's own text.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var ve *policy.ValidationError
	if errors.As(err, &ve) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	for _, e := range errTable {
		if errors.Is(err, e.err) {
			return status.Error(e.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}
