package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func allMethods() []string {
	var out []string
	for _, sd := range []grpc.ServiceDesc{agentv1.EnrollmentService_ServiceDesc, agentv1.AgentService_ServiceDesc, adminv1.AdminService_ServiceDesc} {
		for _, m := range sd.Methods {
			out = append(out, "/"+sd.ServiceName+"/"+m.MethodName)
		}
		for _, s := range sd.Streams {
			out = append(out, "/"+sd.ServiceName+"/"+s.StreamName)
		}
	}
	return out
}

// Every RPC must be in the access table: a new RPC without an entry fails here.
func TestMethodRolesCoverAllMethods(t *testing.T) {
	methods := allMethods()
	for _, m := range methods {
		roles, ok := MethodRoles[m]
		require.True(t, ok, "method %s has no entry in MethodRoles", m)
		require.NotEmpty(t, roles, m)
	}
	require.Len(t, MethodRoles, len(methods), "MethodRoles names a method that does not exist")
}

func ctxWithCert(t *testing.T, cert *x509.Certificate) context.Context {
	p := &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{}}}
	if cert != nil {
		p.AuthInfo = credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}}
	}
	return peer.NewContext(context.Background(), p)
}

func TestAuthorizeMatrix(t *testing.T) {
	ca, _, err := pki.NewCA("t")
	require.NoError(t, err)
	mk := func(cn, role string) *x509.Certificate {
		pemb, _, err := ca.IssueClientCert(cn, role, time.Hour)
		require.NoError(t, err)
		c, err := pki.ParseCertPEM(pemb)
		require.NoError(t, err)
		return c
	}
	agent, admin, revoked := mk("agt-1", pki.RoleAgent), mk("admin", pki.RoleAdmin), mk("agt-2", pki.RoleAgent)
	a := &Authorizer{AgentAllowed: func(id string) error {
		if id == "agt-2" {
			return status.Error(codes.PermissionDenied, "revoked")
		}
		return nil
	}}
	for _, m := range allMethods() {
		roles := MethodRoles[m]
		for _, c := range []struct {
			name string
			cert *x509.Certificate
			role string
		}{{"none", nil, ""}, {"agent", agent, pki.RoleAgent}, {"admin", admin, pki.RoleAdmin}, {"revoked", revoked, pki.RoleAgent}} {
			_, err := a.authorize(ctxWithCert(t, c.cert), m)
			allowed := false
			for _, r := range roles {
				if r == RolePublic || (r == c.role && c.name != "revoked") {
					allowed = true
				}
			}
			if allowed {
				require.NoError(t, err, "%s as %s", m, c.name)
			} else {
				require.Error(t, err, "%s as %s must be denied", m, c.name)
			}
		}
	}
	_, err = a.authorize(ctxWithCert(t, admin), "/tend.unknown.v1.X/Y")
	require.Equal(t, codes.PermissionDenied, status.Code(err))
}
