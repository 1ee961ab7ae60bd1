"""memaudit's read-only Streamlit dashboard (`streamlit run app/main.py -- --db PATH`)."""
