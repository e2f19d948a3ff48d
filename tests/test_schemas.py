import ibis
import pandas as pd
import pytest

from crm_analytics.schemas import require_columns


@pytest.mark.parametrize("make", [lambda f: f, ibis.memtable], ids=["pandas", "ibis"])
def test_require_columns_names_the_first_missing_column(make):
    frame = make(pd.DataFrame({"customer_id": [1], "amount": [2.0]}))
    require_columns(frame, ["amount", "customer_id"])  # all present: no error
    with pytest.raises(ValueError, match=r"^orders has no column 'order_ts'$"):
        require_columns(frame, ["customer_id", "order_ts", "status"], "orders")
