package api

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// RolePublic marks the one method that needs no client certificate.
const RolePublic = "public"

// MethodRoles is the access policy: every RPC and the roles that may call
// it. A method missing here is denied (and TestMethodRolesCoverAllMethods
// fails).
var MethodRoles = map[string][]string{
	agentv1.EnrollmentService_Enroll_FullMethodName: {RolePublic},
	agentv1.EnrollmentService_Renew_FullMethodName:  {pki.RoleAgent},
	agentv1.AgentService_Connect_FullMethodName:     {pki.RoleAgent},

	adminv1.AdminService_ListAgents_FullMethodName:    {pki.RoleAdmin},
	adminv1.AdminService_DeleteAgent_FullMethodName:   {pki.RoleAdmin},
	adminv1.AdminService_ApplyPolicies_FullMethodName: {pki.RoleAdmin},
	adminv1.AdminService_ListPolicies_FullMethodName:  {pki.RoleAdmin},
	adminv1.AdminService_GetPolicy_FullMethodName:     {pki.RoleAdmin},
	adminv1.AdminService_DeletePolicy_FullMethodName:  {pki.RoleAdmin},
	adminv1.AdminService_ListChecks_FullMethodName:    {pki.RoleAdmin},
	adminv1.AdminService_ListResults_FullMethodName:   {pki.RoleAdmin},
	adminv1.AdminService_CreateToken_FullMethodName:   {pki.RoleAdmin},
	adminv1.AdminService_ListIncidents_FullMethodName: {pki.RoleAdmin},
	adminv1.AdminService_GetIncident_FullMethodName:   {pki.RoleAdmin},
	adminv1.AdminService_ListTasks_FullMethodName:     {pki.RoleAdmin},
}

type identityKey struct{}

// IdentityFrom returns the caller's identity set by the auth interceptor.
func IdentityFrom(ctx context.Context) (pki.Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(pki.Identity)
	return id, ok
}

// Authorizer decides who may call what.
type Authorizer struct {
	// AgentAllowed says whether an agent id may still connect (enrolled,
	// not revoked).
	AgentAllowed func(id string) error
	Log          *slog.Logger
}

func peerIdentity(ctx context.Context) (pki.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return pki.Identity{}, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return pki.Identity{}, status.Error(codes.Unauthenticated, "a client certificate issued by this control plane is required")
	}
	id, err := pki.IdentityOf(ti.State.VerifiedChains[0][0])
	if err != nil {
		return pki.Identity{}, status.Error(codes.Unauthenticated, err.Error())
	}
	return id, nil
}

func (a *Authorizer) authorize(ctx context.Context, method string) (context.Context, error) {
	roles, ok := MethodRoles[method]
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "method %s is not allowed", method)
	}
	if slices.Contains(roles, RolePublic) {
		return ctx, nil
	}
	id, err := peerIdentity(ctx)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(roles, id.Role) {
		return nil, status.Errorf(codes.PermissionDenied, "role %q may not call %s", id.Role, method)
	}
	if id.Role == pki.RoleAgent && a.AgentAllowed != nil {
		if err := a.AgentAllowed(id.ID); err != nil {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
	}
	return context.WithValue(ctx, identityKey{}, id), nil
}

func (a *Authorizer) recovered(method string, r any) error {
	a.Log.Error("panic in handler", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return status.Errorf(codes.Internal, "internal error in %s", method)
}

// Unary is the unary interceptor: panic recovery, then authorization.
func (a *Authorizer) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = a.recovered(info.FullMethod, r)
		}
	}()
	ctx, err = a.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(ctx, req)
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// Stream is the stream interceptor: panic recovery, then authorization.
func (a *Authorizer) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = a.recovered(info.FullMethod, r)
		}
	}()
	ctx, err := a.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
}
