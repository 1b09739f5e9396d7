// Command tend-plugin-service is Tend's service action plugin. tend-agent starts it
// through go-plugin; run by hand, it says so and exits. See
// plugins/service/README.md for its actions and parameters.
package main

import (
	"tend.dev/tend/plugins/sdk"
	"tend.dev/tend/plugins/service"
)

func main() { sdk.Serve(service.New(sdk.Logger())) }
