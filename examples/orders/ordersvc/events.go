package ordersvc

import "time"

// Topic is where order events go; the key is the order id.
const Topic = "orders"

// Line is one product line of an order.
type Line struct {
	SKU string `avro:"sku" json:"sku"`
	Qty int32  `avro:"qty" json:"qty"`
}

// OrderCreated carries the new order's state.
type OrderCreated struct {
	OrderID  string    `avro:"order_id"`
	Customer string    `avro:"customer"`
	Lines    []Line    `avro:"lines"`
	Version  int64     `avro:"version"`
	At       time.Time `avro:"at"`
}

// OrderModified carries the fields a PATCH changed (nil: unchanged).
type OrderModified struct {
	OrderID  string    `avro:"order_id"`
	Customer *string   `avro:"customer"`
	Lines    *[]Line   `avro:"lines"`
	Version  int64     `avro:"version"`
	At       time.Time `avro:"at"`
}

// OrderDeleted says the order is gone.
type OrderDeleted struct {
	OrderID string    `avro:"order_id"`
	Version int64     `avro:"version"`
	At      time.Time `avro:"at"`
}

// AvroNamespace puts the records in "orders.v1" for every consumer to match.
func (OrderCreated) AvroNamespace() string  { return "orders.v1" }
func (OrderModified) AvroNamespace() string { return "orders.v1" }
func (OrderDeleted) AvroNamespace() string  { return "orders.v1" }
