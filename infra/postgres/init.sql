-- One Postgres for both servers: the official image creates POSTGRES_DB (mlflow); Prefect gets its own database.
CREATE DATABASE prefect;
