package relayboxtest_test

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/relaybox/relaybox/internal/testenv"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv("DATABASE_URL") == "" && !testenv.Required() {
		// Examples print what they read from Postgres; without it only tests run
		// (and they skip, naming DATABASE_URL). Under RELAYBOX_REQUIRE_SERVICES=1
		// everything runs, and fails without Postgres.
		fmt.Println("relayboxtest: DATABASE_URL unset: examples not run, integration tests skip")
		_ = flag.Set("test.run", "^(Test|Fuzz)")
	}
	os.Exit(m.Run())
}
