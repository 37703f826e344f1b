package consumer

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestInsertSQL_QuotesTheTableAndColumns(t *testing.T) {
	got := insertSQL(pgx.Identifier{"my schema", "effects"}, []string{"id", `we"ird`, "seq"})
	want := `INSERT INTO "my schema"."effects" ("id", "we""ird", "seq") VALUES ($1, $2, $3)`
	if got != want {
		t.Errorf("insertSQL = %s\nwant         %s", got, want)
	}
}
