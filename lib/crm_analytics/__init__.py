"""crm-analytics: customer analytics from raw CRM sources to segments, churn risk and forecasts.

The package holds the logic; the notebooks in ``notebooks/`` hold the narrative.
One module per pipeline stage (:mod:`collect`, :mod:`clean`, :mod:`segment`,
:mod:`churn`, :mod:`forecast`) plus shared modules (:mod:`config`, :mod:`store`,
:mod:`schemas`, :mod:`features`, :mod:`report`, :mod:`plots`), the synthetic data
generator (:mod:`generate`) and the notebook runner (:mod:`runner`).
"""

__version__ = "0.1.0"
