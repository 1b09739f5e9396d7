package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"tend.dev/tend/controlplane/api"
	"tend.dev/tend/internal/adminconf"
	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The descriptors of the control plane's API: every service they declare is
// in the matrix (and must be exactly what the server registers).
var matrixFiles = []protoreflect.FileDescriptor{
	agentv1.File_tend_agent_v1_agent_proto,
	adminv1.File_tend_admin_v1_admin_proto,
}

// How a denied call must fail.
type denial int

const (
	// The TLS handshake refuses the client certificate: Unavailable with a
	// TLS certificate alert, before any RPC exists.
	denyHandshake denial = iota + 1
	// No client certificate: the auth interceptor answers Unauthenticated.
	denyUnauthenticated
	// A verified certificate that may not call the method (wrong role,
	// revoked, not enrolled): PermissionDenied.
	denyPermission
)

func (d denial) String() string {
	switch d {
	case denyHandshake:
		return "TLS handshake"
	case denyUnauthenticated:
		return "Unauthenticated"
	case denyPermission:
		return "PermissionDenied"
	}
	return "?"
}

// matrixCred is one client identity the matrix calls every method with.
type matrixCred struct {
	name string
	// cert is the client certificate (nil: none).
	cert *tls.Certificate
	// role is the certificate's role, for credentials that are valid (may
	// call the methods MethodRoles gives that role).
	role string
	// deny, if set, is how every call with this credential fails, whatever
	// the method's roles.
	deny denial
	// alert is the TLS alert the server answers a refused certificate
	// with (deny == denyHandshake).
	alert string
}

// Alerts a TLS server sends for a refused client certificate.
const (
	alertUnknownCA = "unknown certificate authority"
	alertExpired   = "expired certificate" // or not yet valid
)

// connRefused is how a gRPC call fails when the server refuses the client
// certificate. In TLS 1.3 the client's side of the handshake is over before
// the server checks the certificate: the server's alert arrives on the
// client's first read, unless the client's own first write (the HTTP/2
// preface) already found the connection closed after the alert. Which of
// the two a call reports is a race; that the server does refuse the
// certificate with an alert is checked without it (handshakeAlert).
var connRefused = regexp.MustCompile(`tls: (` + alertUnknownCA + `|` + alertExpired + `)|broken pipe|connection reset by peer|EOF|connection closed`)

// handlerProbe counts, per method, the calls that got past authorization.
type handlerProbe struct {
	mu   sync.Mutex
	hits map[string]int
}

func (p *handlerProbe) hit(method string) {
	p.mu.Lock()
	p.hits[method]++
	p.mu.Unlock()
}

func (p *handlerProbe) count(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hits[method]
}

// Acceptance (issue 4): the auth matrix over every admin and agent RPC,
// generated from the service descriptors. No certificate, a foreign CA, an
// expired certificate, a revoked agent, a revoked credential and every
// wrong role are denied, and the handler is never reached (counted by an
// interceptor chained after the auth interceptor); every allowed role does
// reach it.
func TestAuthMatrix(t *testing.T) {
	probe := &handlerProbe{hits: map[string]int{}}
	dir := t.TempDir()
	s, admin := testServer(t, dir, func(c *Config) { c.HandlerProbe = probe.hit })
	ctx := context.Background()
	addr := s.AdminAddr()
	ca := s.CA()

	// Every method of every service, from the descriptors.
	type rpc struct {
		full string
		md   protoreflect.MethodDescriptor
	}
	var rpcs []rpc
	services := 0
	for _, fd := range matrixFiles {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			services++
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				rpcs = append(rpcs, rpc{full: "/" + string(sd.FullName()) + "/" + string(md.Name()), md: md})
			}
		}
	}
	sort.Slice(rpcs, func(i, j int) bool { return rpcs[i].full < rpcs[j].full })
	// ... which are exactly the methods the server serves: a service
	// registered on the server but absent from the descriptors above would
	// escape the matrix.
	var served, described []string
	for name, info := range s.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			served = append(served, "/"+name+"/"+m.Name)
		}
	}
	for _, r := range rpcs {
		described = append(described, r.full)
		roles, ok := api.MethodRoles[r.full]
		require.True(t, ok, "%s has no entry in api.MethodRoles", r.full)
		// The matrix takes who may call what from MethodRoles; these
		// rules hold whatever the table says (issue 4: agent certificates
		// only on the agent API, admin credentials only on the admin API,
		// only Enroll public, and each operator role can do what the one
		// below it can).
		pkg := r.md.Parent().ParentFile().Package()
		if slices.Contains(roles, api.RolePublic) {
			require.Equal(t, agentv1.EnrollmentService_Enroll_FullMethodName, r.full, "only Enroll is public")
			require.Len(t, roles, 1, r.full)
		}
		if slices.Contains(roles, pki.RoleAgent) {
			require.Equal(t, protoreflect.FullName("tend.agent.v1"), pkg, "agent certificates on %s", r.full)
		}
		for _, role := range pki.OperatorRoles {
			if slices.Contains(roles, role) {
				require.Equal(t, protoreflect.FullName("tend.admin.v1"), pkg, "%s credentials on %s", role, r.full)
			}
		}
		if slices.Contains(roles, pki.RoleViewer) {
			require.Contains(t, roles, pki.RoleOperator, r.full)
		}
		if slices.Contains(roles, pki.RoleOperator) {
			require.Contains(t, roles, pki.RoleAdmin, r.full)
		}
	}
	sort.Strings(served)
	require.Equal(t, described, served, "the matrix's descriptors and the server's services differ")
	for _, want := range []string{"tend.agent.v1.EnrollmentService", "tend.agent.v1.AgentService", "tend.admin.v1.AdminService"} {
		require.Contains(t, s.grpc.GetServiceInfo(), want)
	}

	// Credentials.
	noCert := dialMatrix(t, addr, ca, nil)
	enroll := func(name, token string) *tls.Certificate {
		id, secret, pin, err := pki.ParseToken(token)
		require.NoError(t, err)
		require.Equal(t, ca.Pin(), pin)
		key, csr := newCSR(t)
		resp, err := agentv1.NewEnrollmentServiceClient(noCert).Enroll(ctx, &agentv1.EnrollRequest{Token: id + "." + secret, Name: name, CsrDer: csr})
		require.NoError(t, err)
		return &tls.Certificate{Certificate: [][]byte{resp.GetCertificateDer()}, PrivateKey: key}
	}
	issue := func(name, role string) *tls.Certificate {
		key, csr := newCSR(t)
		resp, err := admin.IssueCredential(ctx, &adminv1.IssueCredentialRequest{Name: name, Role: role, CsrDer: csr})
		require.NoError(t, err)
		block, _ := pem.Decode(resp.GetCertificatePem())
		require.NotNil(t, block)
		return &tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
	}
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{Uses: 2})
	require.NoError(t, err)
	liveAgent := enroll("matrix-live", tok.GetToken())
	liveID, err := x509.ParseCertificate(liveAgent.Certificate[0])
	require.NoError(t, err)
	revokedAgent := enroll("matrix-revoked", tok.GetToken())
	_, err = admin.DeleteAgent(ctx, &adminv1.DeleteAgentRequest{Name: "matrix-revoked"})
	require.NoError(t, err)

	viewer, operator := issue("matrix-viewer", pki.RoleViewer), issue("matrix-operator", pki.RoleOperator)
	revokedOperator, revokedAdmin := issue("matrix-revoked-operator", pki.RoleOperator), issue("matrix-revoked-admin", pki.RoleAdmin)
	for _, n := range []string{"matrix-revoked-operator", "matrix-revoked-admin"} {
		_, err := admin.RevokeCredential(ctx, &adminv1.RevokeCredentialRequest{Name: n})
		require.NoError(t, err)
	}
	conf, err := adminconf.Load(filepath.Join(dir, AdminConfFile))
	require.NoError(t, err)
	adminTLS, err := conf.TLSConfig()
	require.NoError(t, err)
	adminCert := &adminTLS.Certificates[0]

	foreign, _, err := pki.NewCA("foreign CA")
	require.NoError(t, err)
	// An impostor CA with the real CA's subject: only the signature tells
	// them apart.
	impostor, _, err := pki.NewCA(ca.Cert.Subject.CommonName)
	require.NoError(t, err)
	require.Equal(t, ca.Cert.Subject.String(), impostor.Cert.Subject.String())
	now := time.Now()
	hour := time.Hour

	creds := []matrixCred{
		{name: "no certificate", deny: denyUnauthenticated},
		{name: "foreign CA, admin", cert: clientCert(t, foreign, "admin", pki.RoleAdmin, now.Add(-hour), now.Add(hour)), deny: denyHandshake, alert: alertUnknownCA},
		{name: "foreign CA, live agent's id", cert: clientCert(t, foreign, liveID.Subject.CommonName, pki.RoleAgent, now.Add(-hour), now.Add(hour)), deny: denyHandshake, alert: alertUnknownCA},
		{name: "impostor CA (same subject), admin", cert: clientCert(t, impostor, "admin", pki.RoleAdmin, now.Add(-hour), now.Add(hour)), deny: denyHandshake, alert: alertUnknownCA},
		{name: "self-signed, admin", cert: clientCert(t, nil, "admin", pki.RoleAdmin, now.Add(-hour), now.Add(hour)), deny: denyHandshake, alert: alertUnknownCA},
		{name: "expired, admin", cert: clientCert(t, ca, "admin", pki.RoleAdmin, now.Add(-2*hour), now.Add(-hour)), deny: denyHandshake, alert: alertExpired},
		{name: "expired, live agent's id", cert: clientCert(t, ca, liveID.Subject.CommonName, pki.RoleAgent, now.Add(-2*hour), now.Add(-hour)), deny: denyHandshake, alert: alertExpired},
		{name: "not yet valid, admin", cert: clientCert(t, ca, "admin", pki.RoleAdmin, now.Add(hour), now.Add(2*hour)), deny: denyHandshake, alert: alertExpired},
		{name: "revoked agent", cert: revokedAgent, deny: denyPermission},
		{name: "agent never enrolled", cert: clientCert(t, ca, "agt-neverenrolled", pki.RoleAgent, now.Add(-hour), now.Add(hour)), deny: denyPermission},
		{name: "revoked operator credential", cert: revokedOperator, deny: denyPermission},
		{name: "revoked admin credential", cert: revokedAdmin, deny: denyPermission},
		// Valid credentials: denied where their role is not allowed.
		{name: "agent", cert: liveAgent, role: pki.RoleAgent},
		{name: "viewer", cert: viewer, role: pki.RoleViewer},
		{name: "operator", cert: operator, role: pki.RoleOperator},
		{name: "admin (admin.conf)", cert: adminCert, role: pki.RoleAdmin},
		// The control for the expired and not-yet-valid certificates: the
		// same construction with a current window is accepted.
		{name: "admin, made like the expired ones", cert: clientCert(t, ca, "matrix-window", pki.RoleAdmin, now.Add(-hour), now.Add(hour)), role: pki.RoleAdmin},
	}
	// The roles the matrix holds a valid credential for: all of them.
	for _, role := range append([]string{pki.RoleAgent}, pki.OperatorRoles...) {
		require.True(t, slices.ContainsFunc(creds, func(c matrixCred) bool { return c.deny == 0 && c.role == role }), "no valid %s credential", role)
	}

	// The server refuses each of these certificates in the handshake, with
	// the alert for the reason.
	for _, c := range creds {
		if c.deny == denyHandshake {
			require.Equal(t, "remote error: tls: "+c.alert, handshakeAlert(t, addr, ca, c.cert), c.name)
		}
	}

	// Connections: one per credential that gets through the handshake;
	// one per call for those that do not, so that every case really is a
	// handshake (a failed connection would otherwise only replay its
	// cached error).
	conns := map[string]*grpc.ClientConn{}
	connFor := func(c matrixCred) *grpc.ClientConn {
		if c.deny == denyHandshake {
			return dialMatrix(t, addr, ca, c.cert)
		}
		if conns[c.name] == nil {
			conns[c.name] = dialMatrix(t, addr, ca, c.cert)
		}
		return conns[c.name]
	}

	var (
		methods, deniedCases, deniedHits, allowedCases, alertSeen int
		byKind                                                    = map[denial]int{}
		allowed                                                   []func()
	)
	for _, r := range rpcs {
		methods++
		roles := api.MethodRoles[r.full]
		public := slices.Contains(roles, api.RolePublic)
		reached := false
		for _, c := range creds {
			want := c.deny
			if want == 0 && !slices.Contains(roles, c.role) {
				want = denyPermission
			}
			switch {
			case public:
				// Anyone may call it (the handler checks the join token):
				// its denial cases do not apply. The unauthenticated call
				// is its positive control.
				if c.deny == denyUnauthenticated {
					allowed = append(allowed, func() { matrixAllowed(t, probe, connFor(c), r.full, r.md, c.name) })
					allowedCases++
				}
				continue
			case want == 0:
				// Run after every denial, so that no allowed call (some
				// change state) can influence a denial.
				allowed = append(allowed, func() { matrixAllowed(t, probe, connFor(c), r.full, r.md, c.name) })
				allowedCases++
				reached = true
				continue
			}
			deniedCases++
			before := probe.count(r.full)
			conn := connFor(c)
			err := callMatrix(conn, r.full, r.md)
			if c.deny == denyHandshake {
				conn.Close() // no reconnection attempts in the background
			}
			hits := probe.count(r.full) - before
			deniedHits += hits
			byKind[want]++
			require.Zero(t, hits, "%s as %q reached the handler", r.full, c.name)
			require.Error(t, err, "%s as %q must be denied", r.full, c.name)
			st, _ := status.FromError(err)
			switch want {
			case denyHandshake:
				require.Equal(t, codes.Unavailable, st.Code(), "%s as %q: %v", r.full, c.name, err)
				require.Regexp(t, connRefused, st.Message(), "%s as %q: Unavailable, but not for the certificate", r.full, c.name)
				if strings.Contains(st.Message(), "tls: ") {
					alertSeen++
				}
			case denyUnauthenticated:
				require.Equal(t, codes.Unauthenticated, st.Code(), "%s as %q: %v", r.full, c.name, err)
			case denyPermission:
				require.Equal(t, codes.PermissionDenied, st.Code(), "%s as %q: %v", r.full, c.name, err)
			}
		}
		require.True(t, public || reached, "%s: no credential in the matrix may call it", r.full)
	}
	for _, f := range allowed {
		f()
	}
	for _, r := range rpcs {
		require.Positive(t, probe.count(r.full), "%s never reached its handler", r.full)
	}
	require.Zero(t, deniedHits)
	t.Logf("auth matrix: %d services, %d methods, %d credentials; %d cases: %d denied (%d at the TLS handshake [%d calls saw the alert itself], %d Unauthenticated, %d PermissionDenied) with %d handler hits; %d allowed, all reaching the handler",
		services, methods, len(creds), deniedCases+allowedCases, deniedCases,
		byKind[denyHandshake], alertSeen, byKind[denyUnauthenticated], byKind[denyPermission], deniedHits, allowedCases)
}

// matrixAllowed calls a method the credential may call and checks that the
// call reached the handler (whatever the handler then answers to an empty
// request).
func matrixAllowed(t *testing.T, probe *handlerProbe, conn *grpc.ClientConn, method string, md protoreflect.MethodDescriptor, cred string) {
	t.Helper()
	before := probe.count(method)
	err := callMatrix(conn, method, md)
	require.Equal(t, 1, probe.count(method)-before, "%s as %q did not reach the handler: %v", method, cred, err)
	code := status.Code(err)
	require.NotContains(t, []codes.Code{codes.Unavailable, codes.Unimplemented}, code, "%s as %q: %v", method, cred, err)
}

// callMatrix calls any method with an empty request of its input type:
// Invoke for a unary method; for a stream, one message, close, and one
// receive (which returns the call's status).
func callMatrix(conn *grpc.ClientConn, method string, md protoreflect.MethodDescriptor) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, resp := newMessage(md.Input()), newMessage(md.Output())
	if !md.IsStreamingClient() && !md.IsStreamingServer() {
		return conn.Invoke(ctx, method, req, resp)
	}
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{
		StreamName: string(md.Name()), ClientStreams: md.IsStreamingClient(), ServerStreams: md.IsStreamingServer(),
	}, method)
	if err != nil {
		return err
	}
	// A refused stream makes SendMsg return io.EOF; RecvMsg has the status.
	if err := cs.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	return cs.RecvMsg(resp)
}

// newMessage is an empty message of the registered Go type, or a dynamic
// one if none is registered.
func newMessage(d protoreflect.MessageDescriptor) proto.Message {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName()); err == nil {
		return mt.New().Interface()
	}
	return dynamicpb.NewMessage(d)
}

// dialMatrix connects with the control plane's CA pinned and the given
// client certificate (nil: none). The certificate is always presented: a
// crypto/tls client left to itself would withhold one whose issuer is not
// among the CAs the server names, and the server would only see a caller
// without a certificate; a hostile client presents it anyway.
func dialMatrix(t *testing.T, addr string, ca *pki.CA, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	tc := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13}
	if cert != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// handshakeAlert makes a bare TLS connection presenting cert and returns
// the error of the first read: the server's alert if it refused the
// certificate (the client writes nothing, so nothing races the alert).
func handshakeAlert(t *testing.T, addr string, ca *pki.CA, cert *tls.Certificate) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
	})
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = conn.Read(make([]byte, 1))
	require.Error(t, err, "the server accepted the certificate")
	return err.Error()
}

// newCSR makes a P-256 key and a CSR for it.
func newCSR(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}}, key)
	require.NoError(t, err)
	return key, csr
}

// clientCert issues a client certificate like pki's (role in the OU) with
// an explicit validity window, signed by ca, or self-signed if ca is nil.
func clientCert(t *testing.T, ca *pki.CA, cn, role string, notBefore, notAfter time.Time) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := pki.NewSerial()
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, OrganizationalUnit: []string{role}, Organization: []string{"tend"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	parent, signer := tmpl, any(key)
	if ca != nil {
		parent, signer = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	require.NoError(t, err)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A certificate is checked for expiry by the TLS handshake only, so the
// auth interceptor must check it again on every call: a client that keeps
// its connection open (keepalive allows it indefinitely) must not go on
// calling with a certificate that has expired since the handshake. An admin
// credential and an agent certificate, each valid for 2s: a call before
// expiry reaches the handler, the same call on the same connection after
// expiry must be refused before it.
func TestAuthExpiredCertificateOnOpenConnection(t *testing.T) {
	const ttl = 2 * time.Second
	probe := &handlerProbe{hits: map[string]int{}}
	s, admin := testServer(t, t.TempDir(), func(c *Config) {
		c.HandlerProbe = probe.hit
		c.AgentCertTTL = ttl
	})
	ctx := context.Background()
	ca := s.CA()

	now := time.Now()
	adminShort := clientCert(t, ca, "short-lived-admin", pki.RoleAdmin, now.Add(-time.Hour), now.Add(ttl))
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{})
	require.NoError(t, err)
	id, secret, _, err := pki.ParseToken(tok.GetToken())
	require.NoError(t, err)
	key, csr := newCSR(t)
	resp, err := agentv1.NewEnrollmentServiceClient(dialMatrix(t, s.AdminAddr(), ca, nil)).Enroll(ctx,
		&agentv1.EnrollRequest{Token: id + "." + secret, Name: "short-lived-agent", CsrDer: csr})
	require.NoError(t, err)
	agentShort := &tls.Certificate{Certificate: [][]byte{resp.GetCertificateDer()}, PrivateKey: key}
	leaf, err := x509.ParseCertificate(resp.GetCertificateDer())
	require.NoError(t, err)
	expiry := leaf.NotAfter
	if now.Add(ttl).After(expiry) {
		expiry = now.Add(ttl)
	}

	cases := []struct {
		name   string
		cert   *tls.Certificate
		method string
	}{
		{"admin credential", adminShort, adminv1.AdminService_RotateSigningKey_FullMethodName},
		{"agent certificate", agentShort, agentv1.EnrollmentService_Renew_FullMethodName},
	}
	conns := make([]*grpc.ClientConn, len(cases))
	for i, c := range cases {
		conns[i] = dialMatrix(t, s.AdminAddr(), ca, c.cert)
		md := methodDescriptor(t, c.method)
		before := probe.count(c.method)
		_ = callMatrix(conns[i], c.method, md)
		require.Equal(t, 1, probe.count(c.method)-before, "%s: allowed before expiry", c.name)
	}
	time.Sleep(time.Until(expiry) + 500*time.Millisecond)
	for i, c := range cases {
		before := probe.count(c.method)
		err := callMatrix(conns[i], c.method, methodDescriptor(t, c.method))
		require.Zero(t, probe.count(c.method)-before, "%s expired %s ago and still reached %s", c.name, time.Since(expiry).Round(time.Millisecond), c.method)
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%s: %v", c.name, err)
	}
}

// methodDescriptor finds a method of the matrix's services by its full
// gRPC name.
func methodDescriptor(t *testing.T, full string) protoreflect.MethodDescriptor {
	t.Helper()
	for _, fd := range matrixFiles {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				if md := sd.Methods().Get(j); "/"+string(sd.FullName())+"/"+string(md.Name()) == full {
					return md
				}
			}
		}
	}
	t.Fatalf("no method %s", full)
	return nil
}
