package api

import (
	"context"
	"slices"
	"time"

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

	// Reading: every operator role.
	adminv1.AdminService_ListAgents_FullMethodName:      readers,
	adminv1.AdminService_ListPolicies_FullMethodName:    readers,
	adminv1.AdminService_GetPolicy_FullMethodName:       readers,
	adminv1.AdminService_ListChecks_FullMethodName:      readers,
	adminv1.AdminService_ListResults_FullMethodName:     readers,
	adminv1.AdminService_ListIncidents_FullMethodName:   readers,
	adminv1.AdminService_GetIncident_FullMethodName:     readers,
	adminv1.AdminService_ListTasks_FullMethodName:       readers,
	adminv1.AdminService_ListSigningKeys_FullMethodName: readers,

	// Operating the automation: operator and admin.
	adminv1.AdminService_ApproveTask_FullMethodName: operators,
	adminv1.AdminService_RearmPolicy_FullMethodName: operators,

	// Changing what runs, who may enroll, who may call, what signs: admin.
	adminv1.AdminService_DeleteAgent_FullMethodName:        admins,
	adminv1.AdminService_ApplyPolicies_FullMethodName:      admins,
	adminv1.AdminService_DeletePolicy_FullMethodName:       admins,
	adminv1.AdminService_CreateToken_FullMethodName:        admins,
	adminv1.AdminService_IssueCredential_FullMethodName:    admins,
	adminv1.AdminService_ListCredentials_FullMethodName:    admins,
	adminv1.AdminService_RevokeCredential_FullMethodName:   admins,
	adminv1.AdminService_RotateSigningKey_FullMethodName:   admins,
	adminv1.AdminService_ActivateSigningKey_FullMethodName: admins,
	adminv1.AdminService_RetireSigningKey_FullMethodName:   admins,
}

var (
	readers   = []string{pki.RoleViewer, pki.RoleOperator, pki.RoleAdmin}
	operators = []string{pki.RoleOperator, pki.RoleAdmin}
	admins    = []string{pki.RoleAdmin}
)

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
	// CredentialAllowed says whether an admin API credential (by its
	// certificate serial) is still valid (not revoked).
	CredentialAllowed func(id pki.Identity) error
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
	// TLS checks validity at the handshake only; a connection kept open
	// must not outlive its certificate.
	if now := time.Now(); now.After(id.Expiry) {
		return nil, status.Errorf(codes.Unauthenticated, "client certificate %s expired at %s: renew it (agents) or get a new credential", id.ID, id.Expiry.UTC().Format(time.RFC3339))
	}
	if !slices.Contains(roles, id.Role) {
		return nil, status.Errorf(codes.PermissionDenied, "role %q may not call %s", id.Role, method)
	}
	if id.Role == pki.RoleAgent && a.AgentAllowed != nil {
		if err := a.AgentAllowed(id.ID); err != nil {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
	}
	if id.Role != pki.RoleAgent && a.CredentialAllowed != nil {
		if err := a.CredentialAllowed(id); err != nil {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
	}
	return context.WithValue(ctx, identityKey{}, id), nil
}

// Unary is the unary interceptor: authorization (panics are Recoverer's,
// chained before it).
func (a *Authorizer) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod)
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

// Stream is the stream interceptor: authorization (panics are Recoverer's,
// chained before it).
func (a *Authorizer) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, err := a.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
}
