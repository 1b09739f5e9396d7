package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"tend.dev/tend/agent/identity"
	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Fleet is the simulated agents' credentials: one ECDSA key shared by all
// of them (the control plane signs a distinct certificate for each agent,
// whose identity it chooses; it never sees the key), the CA and the pinned
// task-signing keys.
type Fleet struct {
	Key         *ecdsa.PrivateKey
	CAPEM       []byte
	SigningKeys []*agentv1.SigningKey
	Agents      []*Identity

	roots *x509.CertPool
}

// Identity is one simulated agent's enrolled identity.
type Identity struct {
	ID      string
	Name    string
	CertDER []byte
	cert    *tls.Certificate
	// sessions: TLS session tickets, as tend-agent keeps them (one agent's
	// sessions are made one after another: no lock needed).
	sessions tls.ClientSessionCache
}

// fleetFile is the cache of enrolled identities in a state dir.
const fleetFile = "agents.json"

type fleetJSON struct {
	KeyPEM      string                `json:"keyPem"`
	CAPEM       string                `json:"caPem"`
	SigningKeys []*agentv1.SigningKey `json:"signingKeys"`
	Agents      []*identityJSON       `json:"agents"`
}

type identityJSON struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Cert []byte `json:"cert"`
}

func newFleet() (*Fleet, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Fleet{Key: key}, nil
}

// LoadFleet reads the identities cached in dir; a missing file is an empty
// fleet with a new key. Certificates that expire within an hour are
// dropped (their agents enroll again).
func LoadFleet(dir string) (*Fleet, error) {
	b, err := os.ReadFile(filepath.Join(dir, fleetFile))
	if errors.Is(err, os.ErrNotExist) {
		return newFleet()
	}
	if err != nil {
		return nil, err
	}
	var fj fleetJSON
	if err := json.Unmarshal(b, &fj); err != nil {
		return nil, fmt.Errorf("%s: %w", fleetFile, err)
	}
	signer, err := pki.ParseKeyPEM([]byte(fj.KeyPEM))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fleetFile, err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: key is %T, want ECDSA", fleetFile, signer)
	}
	f := &Fleet{Key: key, CAPEM: []byte(fj.CAPEM), SigningKeys: fj.SigningKeys}
	soon := time.Now().Add(time.Hour)
	for _, a := range fj.Agents {
		leaf, err := x509.ParseCertificate(a.Cert)
		if err != nil || leaf.NotAfter.Before(soon) {
			continue
		}
		f.Agents = append(f.Agents, &Identity{ID: a.ID, Name: a.Name, CertDER: a.Cert})
	}
	return f, f.prepare()
}

// Save writes the identities to dir.
func (f *Fleet) Save(dir string) error {
	keyPEM, err := pki.EncodeKeyPEM(f.Key)
	if err != nil {
		return err
	}
	fj := fleetJSON{KeyPEM: string(keyPEM), CAPEM: string(f.CAPEM), SigningKeys: f.SigningKeys}
	for _, a := range f.Agents {
		fj.Agents = append(fj.Agents, &identityJSON{ID: a.ID, Name: a.Name, Cert: a.CertDER})
	}
	b, err := json.Marshal(fj)
	if err != nil {
		return err
	}
	return pki.WriteFileAtomic(filepath.Join(dir, fleetFile), b, 0o600)
}

// prepare builds the TLS certificates and the root pool.
func (f *Fleet) prepare() error {
	if len(f.CAPEM) > 0 {
		f.roots = x509.NewCertPool()
		if !f.roots.AppendCertsFromPEM(f.CAPEM) {
			return errors.New("fleet: CA bundle holds no certificate")
		}
	}
	for _, a := range f.Agents {
		if a.cert != nil {
			continue
		}
		leaf, err := x509.ParseCertificate(a.CertDER)
		if err != nil {
			return fmt.Errorf("agent %s: %w", a.Name, err)
		}
		a.cert = &tls.Certificate{Certificate: [][]byte{a.CertDER}, PrivateKey: f.Key, Leaf: leaf}
	}
	return nil
}

// TLSConfig is agent a's mTLS client config for server (as the real
// agent's identity.TLSConfig: TLS 1.3, the CA as the only root, a session
// cache that outlives the connection, so that reconnections resume).
func (f *Fleet) TLSConfig(a *Identity, server string) *tls.Config {
	if a.sessions == nil {
		a.sessions = pki.NewSessionCache(2)
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		RootCAs:            f.roots,
		ServerName:         identity.ServerName(server),
		Certificates:       []tls.Certificate{*a.cert},
		ClientSessionCache: a.sessions,
	}
}

// EnrollOptions say how many agents to enroll and how.
type EnrollOptions struct {
	// Server is the control plane's gRPC address.
	Server string
	// Admin is an admin client (for the join token).
	Admin adminv1.AdminServiceClient
	// Want is the number of agents the fleet must have.
	Want int
	// Prefix names new agents "<prefix>-<n>".
	Prefix string
	// Labels of the agents.
	Labels map[string]string
	// Parallel enrollments in flight (default 64).
	Parallel int
	// Progress, if set, is called now and then with the agents enrolled.
	Progress func(done int)
}

// Enroll adds agents until the fleet has o.Want of them, with real join
// tokens from the admin API: the same path as `tendctl token create` and
// `tend-agent --token`. One CSR, signed once with the shared key, serves
// every enrollment (the control plane ignores a CSR's subject and sets the
// identity itself), so the cost is the control plane's.
func (f *Fleet) Enroll(ctx context.Context, o EnrollOptions) error {
	need := o.Want - len(f.Agents)
	if need <= 0 {
		return nil
	}
	if o.Parallel <= 0 {
		o.Parallel = 64
	}
	if o.Prefix == "" {
		o.Prefix = "bench"
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "tend-bench"}}, f.Key)
	if err != nil {
		return err
	}
	// Tokens allow at most 100,000 uses (api.MaxTokenUses): one token per
	// 50,000 agents.
	const perToken = 50000
	var tokens []string
	for left := need; left > 0; left -= perToken {
		resp, err := o.Admin.CreateToken(ctx, &adminv1.CreateTokenRequest{
			Ttl: durationpb.New(2 * time.Hour), Uses: uint32(min(left, perToken)), Description: "tend-bench",
		})
		if err != nil {
			return fmt.Errorf("create join token: %w", err)
		}
		tokens = append(tokens, resp.GetToken())
	}
	_, _, pin, err := pki.ParseToken(tokens[0])
	if err != nil {
		return err
	}
	// A few shared connections carry the enrollments (Enroll needs no
	// client certificate; the server is trusted by the token's CA pin).
	const conns = 4
	cc := make([]*grpc.ClientConn, conns)
	for i := range cc {
		c, err := grpc.NewClient("passthrough:///"+o.Server,
			grpc.WithTransportCredentials(credentials.NewTLS(pki.PinnedTLSConfig(pin, identity.ServerName(o.Server)))))
		if err != nil {
			return err
		}
		defer c.Close()
		cc[i] = c
	}

	base := len(f.Agents)
	out := make([]*Identity, need)
	var (
		next     atomic.Int64
		done     atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
		respMu   sync.Mutex
		resp0    *agentv1.EnrollResponse
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < o.Parallel; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			client := agentv1.NewEnrollmentServiceClient(cc[w%conns])
			for {
				i := int(next.Add(1) - 1)
				if i >= need || ctx.Err() != nil {
					return
				}
				tid, sec, _, _ := pki.ParseToken(tokens[i/perToken])
				name := fmt.Sprintf("%s-%06d", o.Prefix, base+i)
				rctx, rcancel := context.WithTimeout(ctx, time.Minute)
				r, err := client.Enroll(rctx, &agentv1.EnrollRequest{
					Token: tid + "." + sec, CsrDer: csr, Name: name, Labels: o.Labels, Version: "tend-bench",
				})
				rcancel()
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("enroll %s: %w", name, err); cancel() })
					return
				}
				out[i] = &Identity{ID: r.GetAgentId(), Name: name, CertDER: r.GetCertificateDer()}
				respMu.Lock()
				if resp0 == nil {
					resp0 = r
				}
				respMu.Unlock()
				if n := done.Add(1); o.Progress != nil && n%1000 == 0 {
					o.Progress(int(n))
				}
			}
		}(w)
	}
	wg.Wait()
	// Keep what was enrolled, even after an error.
	for _, a := range out {
		if a != nil {
			f.Agents = append(f.Agents, a)
		}
	}
	if resp0 != nil {
		f.CAPEM = resp0.GetCaBundlePem()
		f.SigningKeys = resp0.GetSigningKeys()
	}
	if err := f.prepare(); err != nil {
		return err
	}
	return firstErr
}
