// Command tend-plugin-disk is Tend's disk action plugin. tend-agent starts it
// through go-plugin; run by hand, it says so and exits. See
// plugins/disk/README.md for its actions and parameters.
package main

import (
	"tend.dev/tend/plugins/disk"
	"tend.dev/tend/plugins/sdk"
)

func main() { sdk.Serve(disk.New(sdk.Logger())) }
