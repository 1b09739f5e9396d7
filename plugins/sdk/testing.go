package sdk

import (
	"testing"

	"github.com/hashicorp/go-plugin"
)

// TestClient serves impl in this process over a real go-plugin gRPC
// connection (plugin.TestPluginGRPCConn, on a Unix socket) and returns the
// agent's side of it, so that a plugin's tests go through the same
// adapters, status codes and conversions as a running plugin. Both ends
// are closed when the test ends.
func TestClient(t testing.TB, impl Action) *Client {
	t.Helper()
	// Closing the client asks the server to shut down (go-plugin's
	// controller), which stops it.
	client, _ := plugin.TestPluginGRPCConn(t, false, VersionedPlugins(impl)[ProtocolVersion])
	t.Cleanup(func() { _ = client.Close() })
	raw, err := client.Dispense(PluginName)
	if err != nil {
		t.Fatalf("sdk.TestClient: dispense: %v", err)
	}
	c, ok := raw.(*Client)
	if !ok {
		t.Fatalf("sdk.TestClient: dispensed %T, want *sdk.Client", raw)
	}
	return c
}
