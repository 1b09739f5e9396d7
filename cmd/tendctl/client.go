package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"tend.dev/tend/internal/adminconf"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// app is what every command shares: the streams, the flags of the root
// command and, once a command needs it, the admin API client.
type app struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	now    func() time.Time

	configPath string        // --config
	timeout    time.Duration // --timeout

	conn   *grpc.ClientConn
	client adminv1.AdminServiceClient
	server string            // the control plane's address, for messages
	conf   *adminconf.Config // the admin config in use, once connected
}

// config returns the admin config path: --config, else $TEND_CONFIG, else
// the default.
func (a *app) config() string {
	if a.configPath != "" {
		return a.configPath
	}
	if p := a.getenv("TEND_CONFIG"); p != "" {
		return p
	}
	return DefaultConfig
}

// connect returns the admin API client, creating it on first use. The
// connection itself is made by the first call.
func (a *app) connect() (adminv1.AdminServiceClient, error) {
	if a.client != nil {
		return a.client, nil
	}
	conf, err := adminconf.Load(a.config())
	if err != nil {
		return nil, err
	}
	tlsConf, err := conf.TLSConfig()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.config(), err)
	}
	conn, err := grpc.NewClient(conf.Server, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		return nil, fmt.Errorf("admin config %s: server %q: %w", a.config(), conf.Server, err)
	}
	a.conn, a.server, a.conf = conn, conf.Server, conf
	a.client = adminv1.NewAdminServiceClient(conn)
	return a.client, nil
}

func (a *app) close() {
	if a.conn != nil {
		_ = a.conn.Close()
	}
}

// call runs one RPC with the --timeout deadline and turns its error into
// one a person can act on.
func call[Req, Resp any](ctx context.Context, a *app, rpc func(adminv1.AdminServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	var zero Resp
	client, err := a.connect()
	if err != nil {
		return zero, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := rpc(client, ctx, req)
	if err != nil {
		return zero, a.rpcError(err)
	}
	return resp, nil
}

// rpcError maps a gRPC error to a message without the "rpc error: code =
// ... desc =" prefix, with a hint where one helps.
func (a *app) rpcError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		detail := transportDetail(msg)
		lower := strings.ToLower(msg)
		if strings.Contains(lower, "handshake") || strings.Contains(lower, "certificate") || strings.Contains(lower, "x509") || strings.Contains(lower, "tls:") {
			return fmt.Errorf("cannot reach control plane at %s: TLS handshake failed: %s (is %s the admin.conf of this control plane?)", a.server, detail, a.config())
		}
		return fmt.Errorf("cannot reach control plane at %s: %s (is tend-controlplane running?)", a.server, detail)
	case codes.DeadlineExceeded:
		return fmt.Errorf("control plane at %s did not answer within %s (raise --timeout if it is busy)", a.server, a.timeout)
	case codes.Canceled:
		return errors.New("interrupted")
	case codes.PermissionDenied:
		if m := roleDeniedRE.FindStringSubmatch(msg); m != nil {
			method := m[2][strings.LastIndex(m[2], "/")+1:]
			needs := "another role"
			if roles := methodRoles[method]; len(roles) > 0 {
				needs = "the " + strings.Join(roles, " or ") + " role"
			}
			return fmt.Errorf("permission denied: %s needs %s, and the credential in %s has role %s (an admin can issue another: tendctl credential create NAME --role ROLE --out FILE)", method, needs, a.config(), m[1])
		}
		if strings.Contains(msg, "was revoked") {
			return fmt.Errorf("permission denied: %s (%s holds a revoked credential: ask an admin for a new one)", msg, a.config())
		}
		return fmt.Errorf("permission denied: %s (is %s an admin config of this control plane?)", msg, a.config())
	case codes.Unauthenticated:
		return fmt.Errorf("%s (is %s an admin config of this control plane?)", msg, a.config())
	case codes.Unimplemented:
		return fmt.Errorf("%s (is the control plane older than this tendctl?)", msg)
	}
	return errors.New(msg)
}

// roleDeniedRE is the control plane's message when the caller's role may
// not call a method (controlplane/api/auth.go).
var roleDeniedRE = regexp.MustCompile(`^role "([^"]*)" may not call (\S+)$`)

// methodRoles are the roles that may call each admin API method, for
// messages only: the control plane decides (controlplane/api.MethodRoles;
// a test checks that the two agree).
var methodRoles = map[string][]string{
	"ListAgents": readerRoles, "ListPolicies": readerRoles, "GetPolicy": readerRoles,
	"ListChecks": readerRoles, "ListResults": readerRoles, "ListIncidents": readerRoles,
	"GetIncident": readerRoles, "ListTasks": readerRoles, "ListSigningKeys": readerRoles,

	"ApproveTask": operatorRoles, "RearmPolicy": operatorRoles,

	"DeleteAgent": adminRoles, "ApplyPolicies": adminRoles, "DeletePolicy": adminRoles,
	"CreateToken": adminRoles, "IssueCredential": adminRoles, "ListCredentials": adminRoles,
	"RevokeCredential": adminRoles, "RotateSigningKey": adminRoles, "ActivateSigningKey": adminRoles,
	"RetireSigningKey": adminRoles,
}

var (
	readerRoles   = credentialRoles
	operatorRoles = []string{"operator", "admin"}
	adminRoles    = []string{"admin"}
)

// transportDetail shortens grpc's connection error text:
// `connection error: desc = "transport: Error while dialing: dial tcp
// 127.0.0.1:1: connect: connection refused"` → `dial tcp 127.0.0.1:1:
// connect: connection refused`.
func transportDetail(msg string) string {
	s := msg
	s = strings.TrimPrefix(s, "connection error: desc = ")
	s = strings.Trim(s, `"`)
	s = strings.TrimPrefix(s, "transport: ")
	s = strings.TrimPrefix(s, "Error while dialing: ")
	s = strings.TrimPrefix(s, "error while dialing: ")
	s = strings.TrimPrefix(s, "authentication handshake failed: ")
	if s == "" {
		return msg
	}
	return s
}
